package kernel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/pkg/errors"
)

// Limits of device names and start parameters (linux/walb/walb.h, ioctl.h).
const (
	// DiskNameLen is the kernel's DISK_NAME_LEN: name fields are 32 bytes
	// including the terminating NUL.
	DiskNameLen = 32
	// MaxDevNameLen is WALB_DEV_NAME_MAX_LEN: the disk name "walb/L"+NAME
	// plus NUL must fit DiskNameLen, so a walb device name has at most 25
	// bytes. The driver checks it while preparing the device (START_DEV
	// error -6), the start-parameter check only asks for a NUL in 32 bytes.
	MaxDevNameLen = DiskNameLen - len("walb") - len("/L") - 1
	// MaxPendingMB is the largest max_pending_mb the driver accepts (16 GiB).
	MaxPendingMB = 16384
	// StartParamSize is sizeof(struct walb_start_param).
	StartParamSize = 64
)

// Offsets inside struct walb_start_param.
const (
	offSPName               = 0
	offSPMaxPendingMB       = 32
	offSPMinPendingMB       = 36
	offSPQueueStopTimeoutMs = 40
	offSPMaxLogpackKB       = 44
	offSPLogFlushIntervalMs = 48
	offSPLogFlushIntervalMB = 52
	offSPNPackBulk          = 56
	offSPNIOBulk            = 60
)

// Defaults of wdevc create-wdev (walb-tools).
const (
	DefaultMaxLogpackKB       = 32   // -maxl
	DefaultMaxPendingMB       = 32   // -maxp
	DefaultMinPendingMB       = 16   // -minp
	DefaultQueueStopTimeoutMs = 100  // -qp
	DefaultLogFlushIntervalMB = 16   // -fs
	DefaultLogFlushIntervalMs = 100  // -fp
	DefaultNPackBulk          = 128  // -bp
	DefaultNIOBulk            = 1024 // -bi
)

// StartParam is struct walb_start_param, the tuning a walb device is started
// with (START_DEV).
type StartParam struct {
	// Name of the device: /dev/walb/NAME. Empty lets the driver use the name
	// in the log device's super block, or minor/2 if that is empty too.
	Name string
	// MaxPendingMB stops the request queue when this much write data is
	// waiting for the data device; MinPendingMB restarts it.
	MaxPendingMB uint32
	MinPendingMB uint32
	// QueueStopTimeoutMs restarts a stopped queue after this long anyway.
	QueueStopTimeoutMs uint32
	// MaxLogpackKB caps a logpack's size; the driver converts it to
	// physical blocks, rounding down. A single large request may exceed it.
	MaxLogpackKB uint32
	// LogFlushIntervalMs and LogFlushIntervalMB bound how long and how much
	// log may be written before the driver flushes the log device.
	// LogFlushIntervalMs == 0 switches both triggers off.
	LogFlushIntervalMs uint32
	LogFlushIntervalMB uint32
	// NPackBulk and NIOBulk bound how many logpacks and data IOs one worker
	// round handles.
	NPackBulk uint32
	NIOBulk   uint32
}

// DefaultStartParam returns the parameters wdevc create-wdev uses when no
// option is given, with an empty name.
func DefaultStartParam() StartParam {
	return StartParam{
		MaxPendingMB:       DefaultMaxPendingMB,
		MinPendingMB:       DefaultMinPendingMB,
		QueueStopTimeoutMs: DefaultQueueStopTimeoutMs,
		MaxLogpackKB:       DefaultMaxLogpackKB,
		LogFlushIntervalMs: DefaultLogFlushIntervalMs,
		LogFlushIntervalMB: DefaultLogFlushIntervalMB,
		NPackBulk:          DefaultNPackBulk,
		NIOBulk:            DefaultNIOBulk,
	}
}

// Validate checks the driver's is_walb_start_param_valid() rules plus the
// name rules the driver enforces later, so a bad parameter is reported here
// by name instead of as START_DEV error -3 or -6:
//
//	name          < 32 bytes with no NUL, and at most MaxDevNameLen (25) bytes
//	max_pending   2 <= max_pending_mb <= 16384
//	min_pending   1 <= min_pending_mb < max_pending_mb
//	queue stop    queue_stop_timeout_ms >= 1
//	flush size    2 * log_flush_interval_mb <= max_pending_mb
//	bulks         n_pack_bulk > 0, n_io_bulk > 0
//
// The flush-size rule is evaluated in 64 bits: the driver multiplies in 32
// bits, so it would accept huge values that wrap around.
func (p StartParam) Validate() error {
	var bad []string
	if strings.IndexByte(p.Name, 0) >= 0 {
		bad = append(bad, "name contains a NUL byte")
	}
	if len(p.Name) > MaxDevNameLen {
		bad = append(bad, fmt.Sprintf("name is %d bytes, more than %d", len(p.Name), MaxDevNameLen))
	}
	if p.MaxPendingMB < 2 || p.MaxPendingMB > MaxPendingMB {
		bad = append(bad, fmt.Sprintf("max_pending_mb %d not in [2, %d]", p.MaxPendingMB, MaxPendingMB))
	}
	if p.MinPendingMB < 1 || p.MinPendingMB >= p.MaxPendingMB {
		bad = append(bad, fmt.Sprintf("min_pending_mb %d not in [1, max_pending_mb %d)", p.MinPendingMB, p.MaxPendingMB))
	}
	if p.QueueStopTimeoutMs < 1 {
		bad = append(bad, "queue_stop_timeout_ms is 0")
	}
	if 2*uint64(p.LogFlushIntervalMB) > uint64(p.MaxPendingMB) {
		bad = append(bad, fmt.Sprintf("2*log_flush_interval_mb (%d) > max_pending_mb (%d)", 2*uint64(p.LogFlushIntervalMB), p.MaxPendingMB))
	}
	if p.NPackBulk == 0 {
		bad = append(bad, "n_pack_bulk is 0")
	}
	if p.NIOBulk == 0 {
		bad = append(bad, "n_io_bulk is 0")
	}
	if len(bad) > 0 {
		return errors.Wrap(ErrInvalidStartParam, strings.Join(bad, "; "))
	}
	return nil
}

// Marshal encodes p as struct walb_start_param. It fails only if the name
// cannot be stored NUL-terminated in 32 bytes; the other rules are Validate's.
func (p StartParam) Marshal() ([StartParamSize]byte, error) {
	var b [StartParamSize]byte
	if len(p.Name) >= DiskNameLen || strings.IndexByte(p.Name, 0) >= 0 {
		return b, errors.Wrapf(ErrInvalidStartParam, "name %q does not fit a %d-byte C string", p.Name, DiskNameLen)
	}
	copy(b[offSPName:offSPName+DiskNameLen], p.Name)
	le := binary.LittleEndian
	le.PutUint32(b[offSPMaxPendingMB:], p.MaxPendingMB)
	le.PutUint32(b[offSPMinPendingMB:], p.MinPendingMB)
	le.PutUint32(b[offSPQueueStopTimeoutMs:], p.QueueStopTimeoutMs)
	le.PutUint32(b[offSPMaxLogpackKB:], p.MaxLogpackKB)
	le.PutUint32(b[offSPLogFlushIntervalMs:], p.LogFlushIntervalMs)
	le.PutUint32(b[offSPLogFlushIntervalMB:], p.LogFlushIntervalMB)
	le.PutUint32(b[offSPNPackBulk:], p.NPackBulk)
	le.PutUint32(b[offSPNIOBulk:], p.NIOBulk)
	return b, nil
}

// UnmarshalStartParam decodes exactly StartParamSize bytes. The name ends at
// the first NUL; a name field without NUL decodes to all 32 bytes, which
// Validate then rejects.
func UnmarshalStartParam(b []byte) (StartParam, error) {
	if len(b) != StartParamSize {
		return StartParam{}, errors.Wrapf(ErrStartParamSize, "got %d bytes", len(b))
	}
	le := binary.LittleEndian
	return StartParam{
		Name:               cString(b[offSPName : offSPName+DiskNameLen]),
		MaxPendingMB:       le.Uint32(b[offSPMaxPendingMB:]),
		MinPendingMB:       le.Uint32(b[offSPMinPendingMB:]),
		QueueStopTimeoutMs: le.Uint32(b[offSPQueueStopTimeoutMs:]),
		MaxLogpackKB:       le.Uint32(b[offSPMaxLogpackKB:]),
		LogFlushIntervalMs: le.Uint32(b[offSPLogFlushIntervalMs:]),
		LogFlushIntervalMB: le.Uint32(b[offSPLogFlushIntervalMB:]),
		NPackBulk:          le.Uint32(b[offSPNPackBulk:]),
		NIOBulk:            le.Uint32(b[offSPNIOBulk:]),
	}, nil
}

// cString returns b up to its first NUL, or all of b.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

package proxy

import (
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
)

// Limits of an archive info (system.md §4.3): levels 0–9, 1–255 compressing
// CPUs (stored in a u8), and a send delay that fits the u32 of the file.
const (
	MaxCompressionLevel = 9
	MaxCompressionCPUs  = 255
	MaxSendDelay        = math.MaxUint32 * time.Second
	maxHostLen          = 1024
)

// DefaultCompression is the archive info's default compression, snappy:0:1.
var DefaultCompression = wdiff.Compression{Codec: wdiff.CodecSnappy, Level: 0, Workers: 1}

// ArchiveInfo says where and how a volume's diffs are sent to one archive
// (walb-tools HostInfoForBkp).
type ArchiveInfo struct {
	// Host and Port address the archive server.
	Host string
	Port uint16
	// Compression is applied to the merged diffs sent to the archive.
	Compression wdiff.Compression
	// Delay postpones the send of each new diff (wdiffSendDelaySec);
	// a whole number of seconds.
	Delay time.Duration
}

// Addr returns host:port, with brackets around an IPv6 host.
func (a ArchiveInfo) Addr() string { return net.JoinHostPort(a.Host, strconv.Itoa(int(a.Port))) }

// String returns the form archive-info add takes and archive-info get
// prints: "HOST:PORT TYPE:LEVEL:NCPU DELAY".
func (a ArchiveInfo) String() string {
	return fmt.Sprintf("%s %s %d", a.Addr(), a.Compression, int64(a.Delay/time.Second))
}

// Validate checks every field.
func (a ArchiveInfo) Validate() error {
	if a.Host == "" || len(a.Host) > maxHostLen || strings.ContainsAny(a.Host, " \t\r\n\x00") {
		return errors.Wrapf(ErrBadArchiveInfo, "host %q", a.Host)
	}
	if a.Port == 0 {
		return errors.Wrapf(ErrBadArchiveInfo, "port 0 of %s", a.Host)
	}
	c := a.Compression
	if err := c.Validate(); err != nil {
		return errors.Wrapf(ErrBadArchiveInfo, "compression %s: %v", c, err)
	}
	if c.Level > MaxCompressionLevel {
		return errors.Wrapf(ErrBadArchiveInfo, "compression level %d, over %d", c.Level, MaxCompressionLevel)
	}
	if c.Workers < 1 || c.Workers > MaxCompressionCPUs {
		return errors.Wrapf(ErrBadArchiveInfo, "compression cpus %d, not in [1, %d]", c.Workers, MaxCompressionCPUs)
	}
	if a.Delay < 0 || a.Delay > MaxSendDelay || a.Delay%time.Second != 0 {
		return errors.Wrapf(ErrBadArchiveInfo, "delay %s: must be whole seconds in [0, %d]", a.Delay, uint32(math.MaxUint32))
	}
	return nil
}

// ParseArchiveInfo parses the arguments of archive-info add/update after the
// archive name: ADDR:PORT [TYPE:LEVEL:NCPU [DELAY]], with the defaults
// snappy:0:1 and 0 seconds.
func ParseArchiveInfo(args []string) (ArchiveInfo, error) {
	if len(args) < 1 || len(args) > 3 {
		return ArchiveInfo{}, errors.Wrapf(ErrBadArchiveInfo, "want ADDR:PORT [TYPE:LEVEL:NCPU [DELAY]], got %q", args)
	}
	host, port, err := net.SplitHostPort(args[0])
	if err != nil {
		return ArchiveInfo{}, errors.Wrapf(ErrBadArchiveInfo, "address %q: %v", args[0], err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return ArchiveInfo{}, errors.Wrapf(ErrBadArchiveInfo, "port %q", port)
	}
	a := ArchiveInfo{Host: host, Port: uint16(p), Compression: DefaultCompression}
	if len(args) > 1 {
		if a.Compression, err = wdiff.ParseCompression(args[1]); err != nil {
			return ArchiveInfo{}, errors.Wrapf(ErrBadArchiveInfo, "compression %q: %v", args[1], err)
		}
	}
	if len(args) > 2 {
		sec, err := strconv.ParseUint(args[2], 10, 32)
		if err != nil {
			return ArchiveInfo{}, errors.Wrapf(ErrBadArchiveInfo, "delay %q: want seconds", args[2])
		}
		a.Delay = time.Duration(sec) * time.Second
	}
	if err := a.Validate(); err != nil {
		return ArchiveInfo{}, err
	}
	return a, nil
}

// ValidateArchiveName checks an archive name. It names a file and a
// directory of the volume, so the volume-name rules apply: 1 to 64
// characters from [0-9A-Za-z-].
func ValidateArchiveName(name string) error {
	if err := server.ValidateVolumeName(name); err != nil {
		return errors.Wrapf(ErrBadArchiveInfo, "archive name %q: %v", name, err)
	}
	return nil
}

// EncodeTo writes the archive info as walb-tools' <archive>.archive file
// holds it: string host, u16 port, u8 type, u8 level, u8 cpus, u32 delay
// seconds.
func (a ArchiveInfo) EncodeTo(e *meta.Encoder) error {
	if err := a.Validate(); err != nil {
		return err
	}
	e.String(a.Host)
	e.U16(a.Port)
	e.U8(uint8(a.Compression.Codec))
	e.U8(uint8(a.Compression.Level))
	e.U8(uint8(a.Compression.Workers))
	return e.U32(uint32(a.Delay / time.Second))
}

// DecodeFrom reads what EncodeTo writes and validates it.
func (a *ArchiveInfo) DecodeFrom(d *meta.Decoder) error {
	host, _ := d.String(maxHostLen)
	port, _ := d.U16()
	codec, _ := d.U8()
	level, _ := d.U8()
	cpus, _ := d.U8()
	delay, err := d.U32()
	if err != nil {
		return err
	}
	v := ArchiveInfo{
		Host: host, Port: port,
		Compression: wdiff.Compression{Codec: wdiff.Codec(codec), Level: int(level), Workers: int(cpus)},
		Delay:       time.Duration(delay) * time.Second,
	}
	if err := v.Validate(); err != nil {
		return err
	}
	*a = v
	return nil
}

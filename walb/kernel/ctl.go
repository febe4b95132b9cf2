package kernel

import (
	"encoding/binary"

	"github.com/pkg/errors"
)

// Sizes of the packed ioctl structures on a 64-bit kernel.
const (
	// CtlSize is sizeof(struct walb_ctl).
	CtlSize = 120
	// CtlDataSize is sizeof(struct walb_ctl_data).
	CtlDataSize = 48
)

// Offsets inside struct walb_ctl.
const (
	offCommand = 0
	offValInt  = 4
	offValU64  = 8
	offValU32  = 16
	offError   = 20
	offU2K     = 24
	offK2U     = offU2K + CtlDataSize // 72
)

// Offsets inside struct walb_ctl_data.
const (
	offWMajor  = 0
	offWMinor  = 4
	offLMajor  = 8
	offLMinor  = 12
	offDMajor  = 16
	offDMinor  = 20
	offBufSize = 24
	offBuf     = 32
	offKBuf    = 40
)

// DynamicMinor in CtlData.WMinor of START_DEV lets the driver pick the minor
// (WALB_DYNAMIC_MINOR, (unsigned)-1).
const DynamicMinor = ^uint32(0)

// CtlData is struct walb_ctl_data: one direction of a Ctl. Buf and KBuf are
// addresses, kept as u64 because the layout is that of a 64-bit kernel.
type CtlData struct {
	WMajor, WMinor uint32 // walb device
	LMajor, LMinor uint32 // log device
	DMajor, DMinor uint32 // data device
	BufSize        uint64 // bytes at Buf
	Buf            uint64 // userland address of the buffer, 0 if none
	KBuf           uint64 // kernel-side copy; the driver overwrites it
}

// Ctl is struct walb_ctl, the argument of ReqControl and ReqWdev. Userland
// fills U2K (and the val fields) and the driver answers in K2U, the val fields
// and Error.
type Ctl struct {
	Command Command
	ValInt  int32
	ValU64  uint64
	ValU32  uint32
	Error   int32 // command-specific failure code (START_DEV, STOP_DEV)
	U2K     CtlData
	K2U     CtlData
}

// Marshal encodes c in the driver's packed little-endian layout.
func (c *Ctl) Marshal() [CtlSize]byte {
	var b [CtlSize]byte
	le := binary.LittleEndian
	le.PutUint32(b[offCommand:], uint32(c.Command))
	le.PutUint32(b[offValInt:], uint32(c.ValInt))
	le.PutUint64(b[offValU64:], c.ValU64)
	le.PutUint32(b[offValU32:], c.ValU32)
	le.PutUint32(b[offError:], uint32(c.Error))
	c.U2K.put(b[offU2K : offU2K+CtlDataSize])
	c.K2U.put(b[offK2U : offK2U+CtlDataSize])
	return b
}

// Unmarshal decodes exactly CtlSize bytes into c. Every bit pattern is a
// valid Ctl, so the only error is a wrong length.
func (c *Ctl) Unmarshal(b []byte) error {
	if len(b) != CtlSize {
		return errors.Wrapf(ErrCtlSize, "got %d bytes", len(b))
	}
	le := binary.LittleEndian
	c.Command = Command(le.Uint32(b[offCommand:]))
	c.ValInt = int32(le.Uint32(b[offValInt:]))
	c.ValU64 = le.Uint64(b[offValU64:])
	c.ValU32 = le.Uint32(b[offValU32:])
	c.Error = int32(le.Uint32(b[offError:]))
	c.U2K.get(b[offU2K : offU2K+CtlDataSize])
	c.K2U.get(b[offK2U : offK2U+CtlDataSize])
	return nil
}

func (d *CtlData) put(b []byte) {
	le := binary.LittleEndian
	le.PutUint32(b[offWMajor:], d.WMajor)
	le.PutUint32(b[offWMinor:], d.WMinor)
	le.PutUint32(b[offLMajor:], d.LMajor)
	le.PutUint32(b[offLMinor:], d.LMinor)
	le.PutUint32(b[offDMajor:], d.DMajor)
	le.PutUint32(b[offDMinor:], d.DMinor)
	le.PutUint64(b[offBufSize:], d.BufSize)
	le.PutUint64(b[offBuf:], d.Buf)
	le.PutUint64(b[offKBuf:], d.KBuf)
}

func (d *CtlData) get(b []byte) {
	le := binary.LittleEndian
	d.WMajor = le.Uint32(b[offWMajor:])
	d.WMinor = le.Uint32(b[offWMinor:])
	d.LMajor = le.Uint32(b[offLMajor:])
	d.LMinor = le.Uint32(b[offLMinor:])
	d.DMajor = le.Uint32(b[offDMajor:])
	d.DMinor = le.Uint32(b[offDMinor:])
	d.BufSize = le.Uint64(b[offBufSize:])
	d.Buf = le.Uint64(b[offBuf:])
	d.KBuf = le.Uint64(b[offKBuf:])
}

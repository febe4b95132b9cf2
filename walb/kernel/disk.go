package kernel

import (
	"encoding/binary"
	"strings"

	"github.com/pkg/errors"
)

// DiskDataSize is sizeof(struct walb_disk_data), one LIST_DEV record.
const DiskDataSize = DiskNameLen + 8

// Paths the driver creates.
const (
	// DirName is WALB_DIR_NAME: walb nodes live in /dev/walb and walb disk
	// names start with "walb/".
	DirName = "walb"
	// ControlPath is the control node (WALB_CONTROL_PATH).
	ControlPath = "/dev/" + DirName + "/control"
	// DevDir holds the walb device nodes: DevDir + NAME.
	DevDir = "/dev/" + DirName + "/"
	// SysBlockDir is where sysfs lists block devices.
	SysBlockDir = "/sys/block"
)

// DiskData is struct walb_disk_data: one walb device in a LIST_DEV answer.
//
//	off size field
//	  0   32 name   disk name "walb/NAME", NUL-terminated
//	 32    4 major
//	 36    4 minor  always even; the walblog device, if any, is minor+1
type DiskData struct {
	DiskName     string // "walb/NAME", as the kernel names the gendisk
	Major, Minor uint32
}

// Name is the walb device name: DiskName without the "walb/" prefix.
func (d DiskData) Name() string { return strings.TrimPrefix(d.DiskName, DirName+"/") }

// Path is the device node, /dev/walb/NAME.
func (d DiskData) Path() string { return "/dev/" + d.DiskName }

// Marshal encodes d as struct walb_disk_data. A disk name longer than 31
// bytes is cut, as the driver's snprintf would.
func (d DiskData) Marshal() [DiskDataSize]byte {
	var b [DiskDataSize]byte
	copy(b[:DiskNameLen-1], d.DiskName)
	binary.LittleEndian.PutUint32(b[DiskNameLen:], d.Major)
	binary.LittleEndian.PutUint32(b[DiskNameLen+4:], d.Minor)
	return b
}

// UnmarshalDiskData decodes exactly DiskDataSize bytes. Like walb-tools'
// list command it treats the last name byte as a terminator, so a record
// without NUL yields a 31-byte name rather than garbage.
func UnmarshalDiskData(b []byte) (DiskData, error) {
	if len(b) != DiskDataSize {
		return DiskData{}, errors.Wrapf(ErrDiskDataSize, "got %d bytes", len(b))
	}
	return DiskData{
		DiskName: cString(b[:DiskNameLen-1]),
		Major:    binary.LittleEndian.Uint32(b[DiskNameLen:]),
		Minor:    binary.LittleEndian.Uint32(b[DiskNameLen+4:]),
	}, nil
}

// SysfsDir is the sysfs directory of the walb device NAME. The gendisk is
// named "walb/NAME" and sysfs spells '/' as '!', so this is
// /sys/block/walb!NAME (walb-tools' getSysfsPath).
func SysfsDir(name string) string {
	return SysBlockDir + "/" + strings.ReplaceAll(DirName+"/"+name, "/", "!")
}

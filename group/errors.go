package group

import "github.com/pkg/errors"

// Sentinel errors. Returned errors wrap them with context; test with
// errors.Is. Errors of the servers and of the controller come through
// unchanged (wire codes, controller sentinels).
var (
	// ErrConfig means a Config or VolumeOptions field is out of range.
	ErrConfig = errors.New("group: bad configuration")
	// ErrClosed means the group was closed.
	ErrClosed = errors.New("group: closed")
	// ErrExists means a volume of that name already exists.
	ErrExists = errors.New("group: volume exists")
	// ErrNotFound means no volume has that name.
	ErrNotFound = errors.New("group: no such volume")
	// ErrBadName means a volume name is not usable both as a server volume
	// name and as a WalB device name.
	ErrBadName = errors.New("group: bad volume name")
	// ErrServer means a server of the group stopped by itself or failed
	// to start.
	ErrServer = errors.New("group: server failed")
	// ErrLayout means the group directory does not match the
	// configuration (a volume of a storage the configuration lacks).
	ErrLayout = errors.New("group: directory does not match the configuration")
)

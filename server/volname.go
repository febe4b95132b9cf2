package server

import "github.com/pkg/errors"

// MaxVolumeNameLen is the longest volume name (walb-tools: 64).
const MaxVolumeNameLen = 64

// ValidateVolumeName checks a volume name the way walb-tools does: 1 to 64
// characters from [0-9A-Za-z-]. Every server validates every volume
// argument with it before using it in a path, an LV name or a log line, so
// names can never escape the base directory ("/", "..", NUL, spaces are all
// refused) and parse back unambiguously from names like wr_<vol>_<gid>.
// The error wraps ErrBadVolumeName.
func ValidateVolumeName(name string) error {
	if name == "" {
		return errors.Wrap(ErrBadVolumeName, "empty volume name")
	}
	if len(name) > MaxVolumeNameLen {
		return errors.Wrapf(ErrBadVolumeName, "volume name of %d bytes, over %d", len(name), MaxVolumeNameLen)
	}
	for i := range len(name) {
		c := name[i]
		ok := c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-'
		if !ok {
			return errors.Wrapf(ErrBadVolumeName, "volume name %q: byte 0x%02x at %d is not in [0-9A-Za-z-]", name, c, i)
		}
	}
	return nil
}

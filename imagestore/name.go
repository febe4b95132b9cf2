package imagestore

import (
	"crypto/rand"
	"strings"

	"github.com/pkg/errors"
)

// MaxNameLen bounds image names so that a temporary name built from one
// (TempPrefix, the name, a dash and a random suffix) still fits the 255-byte
// file name limit of Linux file systems.
const MaxNameLen = 200

// TempPrefix starts every temporary name the store makes. ValidName rejects
// names that start with a dot, so a temporary name can never collide with an
// image and CleanTemps can find every leftover by its prefix alone.
const TempPrefix = ".imgtmp-"

const tempRandLen = 8

// ValidName reports whether name can name an image: 1 to MaxNameLen bytes
// from [0-9A-Za-z_.+-], not starting with '.' or '-', and without "..".
// walb-tools' own names (wb_VOL, wr_VOL_GID, wc_VOL_GID, with volume names
// from [0-9A-Za-z-]) all qualify. The set keeps names free of path
// separators, shell metacharacters and option-like leading dashes, so a path
// built from one is always a direct child of the store directory and is safe
// to hand to external tools.
func ValidName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return errors.Wrapf(ErrInvalidName, "%q: length %d not in 1..%d", name, len(name), MaxNameLen)
	}
	if name[0] == '.' || name[0] == '-' {
		return errors.Wrapf(ErrInvalidName, "%q: starts with %q", name, name[0])
	}
	if strings.Contains(name, "..") {
		return errors.Wrapf(ErrInvalidName, "%q: contains \"..\"", name)
	}
	for i := 0; i < len(name); i++ {
		if !nameChar(name[i]) {
			return errors.Wrapf(ErrInvalidName, "%q: byte %#x at %d", name, name[i], i)
		}
	}
	return nil
}

func nameChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '_' || c == '.' || c == '+' || c == '-'
}

// IsTempName reports whether a directory entry is a temporary file of the
// store (a pending image, or a capability probe), which CleanTemps removes.
func IsTempName(name string) bool { return strings.HasPrefix(name, TempPrefix) }

const tempAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// tempName returns a fresh temporary name for an image that will be
// committed as target: the target is kept in it so an operator looking at a
// leftover knows what it was meant to become.
func tempName(target string) (string, error) {
	var rnd [tempRandLen]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", errors.Wrap(err, "imagestore: temp name")
	}
	b := make([]byte, 0, len(TempPrefix)+len(target)+1+tempRandLen)
	b = append(b, TempPrefix...)
	b = append(b, target...)
	b = append(b, '-')
	for _, r := range rnd {
		b = append(b, tempAlphabet[int(r)%len(tempAlphabet)])
	}
	return string(b), nil
}

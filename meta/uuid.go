package meta

import (
	"crypto/rand"
	"encoding/hex"

	"github.com/pkg/errors"
)

// UUID is a WalB device or archive identity: 16 random bytes (not an RFC 4122
// UUID). Its text form is 32 lowercase hex digits and its serialized form is
// the 16 raw bytes; the archive's uuid and archive_uuid files hold exactly that.
type UUID [UUIDSize]byte

// NewUUID returns 16 random bytes from crypto/rand.
func NewUUID() (UUID, error) {
	var u UUID
	if _, err := rand.Read(u[:]); err != nil {
		return u, errors.Wrap(err, "meta: random uuid")
	}
	return u, nil
}

// String returns the 32-hex-digit form.
func (u UUID) String() string { return hex.EncodeToString(u[:]) }

// IsZero reports whether all bytes are zero (init-vol's placeholder).
func (u UUID) IsZero() bool { return u == UUID{} }

// ParseUUID parses 32 hex digits (either case).
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 2*UUIDSize {
		return u, errors.Wrapf(ErrBadText, "uuid %q: want %d hex digits", s, 2*UUIDSize)
	}
	if _, err := hex.Decode(u[:], []byte(s)); err != nil {
		return u, errors.Wrapf(ErrBadText, "uuid %q: %v", s, err)
	}
	return u, nil
}

// EncodeTo writes the 16 raw bytes.
func (u UUID) EncodeTo(e *Encoder) error { return e.UUID(u) }

// DecodeFrom reads 16 raw bytes.
func (u *UUID) DecodeFrom(d *Decoder) error {
	v, err := d.UUID()
	if err != nil {
		return err
	}
	*u = v
	return nil
}

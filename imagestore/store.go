package imagestore

import (
	"context"
	"io"

	"github.com/pkg/errors"
)

// Store holds named images of fixed size. A file-based store (Dir) keeps
// each image as a sparse file; another backend (LVM thin volumes) can fill
// the same contract. Every method that changes which images exist, or their
// sizes, is durable when it returns nil: after a crash the change is either
// wholly there or wholly absent (see the package documentation).
//
// Methods are safe for concurrent use on different names. Operations on the
// same name must be serialized by the caller, as the archive's action locks
// do; in particular Clone reads src while it runs, so src must not be
// written meanwhile.
type Store interface {
	// Create makes a new image of size bytes that reads as zeros and takes
	// no space until written. It fails with ErrExist if name exists.
	Create(ctx context.Context, name string, size int64) (Image, error)
	// Open opens an existing image.
	Open(ctx context.Context, name string, mode Mode) (Image, error)
	// Clone makes dst an independent copy of src, sharing blocks where the
	// backend can (reflink, thin snapshot), and returns it opened
	// read-write. It fails with ErrExist if dst exists.
	Clone(ctx context.Context, src, dst string) (Image, error)
	// CloneTemp copies src like Clone, but under a temporary name that no
	// listing shows; Commit then gives the copy the name dst, replacing any
	// image of that name. dst may equal src: that is the apply pattern
	// (see CloneForApply).
	CloneTemp(ctx context.Context, src, dst string) (Pending, error)
	// Rename gives image from the name to. It fails with ErrExist if to
	// exists: replacing goes through CloneTemp, whose crash behaviour is
	// defined.
	Rename(ctx context.Context, from, to string) error
	// Remove deletes an image.
	Remove(ctx context.Context, name string) error
	// List returns the image names in lexical order. Temporary images are
	// not listed.
	List(ctx context.Context) ([]string, error)
	// Resize grows an image to size bytes; the new area reads as zeros.
	// A smaller size fails with ErrShrink, an equal one does nothing.
	// Images already open keep the size they had when opened.
	Resize(ctx context.Context, name string, size int64) error
	// Path returns a path that external tools (qemu-img, an NBD server,
	// dd) can open to read or write the image: a file for Dir, a device
	// node for a volume manager. It does not check that the image exists.
	Path(name string) (string, error)
	// CleanTemps removes the temporary images a crash left behind and
	// returns their names. Call it once at startup, before any CloneTemp.
	CleanTemps(ctx context.Context) ([]string, error)
	// Capabilities describes what the backend does underneath.
	Capabilities() Capabilities
}

// Image is an open image. ReadAt and WriteAt follow the io.ReaderAt and
// io.WriterAt contracts and are safe for concurrent use. The size is fixed
// while the image is open: WriteAt and Punch past it fail with
// ErrOutOfRange, and ReadAt past it returns io.EOF.
type Image interface {
	io.ReaderAt
	io.WriterAt
	// Size is the image size in bytes.
	Size() int64
	// Sync makes every completed write durable.
	Sync() error
	// Punch deallocates [off, off+n): the range reads as zeros afterwards,
	// and its space is returned to the file system where it can do that
	// (otherwise zeros are written).
	Punch(off, n int64) error
	// Close releases the image. It does not sync.
	Close() error
}

// Pending is an image under a temporary name, made by CloneTemp. Exactly one
// of Commit and Abort takes effect; Close on a Pending that was not
// committed aborts it.
type Pending interface {
	Image
	// Commit syncs the image and renames it to its target name, replacing
	// any image there, then makes the rename durable. It closes the
	// image. After a crash the target holds either its previous image or
	// the complete new one, never a mix; a crash before the rename leaves
	// a temporary file that CleanTemps removes.
	Commit(ctx context.Context) error
	// Abort closes and removes the temporary image.
	Abort() error
}

// Mode says how Open opens an image.
type Mode int

const (
	// ReadOnly opens for reading; writes fail with ErrReadOnly.
	ReadOnly Mode = iota
	// ReadWrite opens for reading and writing.
	ReadWrite
)

// Capabilities describes a store's backend.
type Capabilities struct {
	// Backend names the implementation: "dir" for Dir.
	Backend string
	// FSType is the file system under the store, from its statfs magic
	// ("xfs", "btrfs", "ext4", "tmpfs", "overlay"...; unknown magics are
	// shown in hex).
	FSType string
	// Reflink is true when Clone shares blocks with its source instead of
	// copying them, so that it takes constant time and almost no space.
	Reflink bool
	// PunchHole is true when Punch frees space; otherwise it writes zeros.
	PunchHole bool
}

// CloneForApply changes image name by the apply function so that a crash at
// any moment leaves either the old image or the completely changed one
// under name, never a half-applied one:
//
//  1. clone name to a temporary image (shares blocks where the backend
//     reflinks, else a sparse copy);
//  2. run apply on the clone; name itself is never written;
//  3. Commit: sync the clone, rename it over name, sync the directory.
//
// A crash before the rename leaves name untouched and a temporary image
// that CleanTemps removes; once the rename is durable name is the new
// image. If apply fails, or ctx is cancelled before the rename, the clone
// is removed and name is unchanged.
//
// The archive may run this inside its applying state (system.md §5.3) as
// walb-tools does; the state then only ever guards an image that is either
// at its begin or at its end snapshot, and reapplying the minimum list to
// either is idempotent. On a store without Reflink the clone is a full
// copy of the allocated data, which may cost more than applying in place.
func CloneForApply(ctx context.Context, s Store, name string, apply func(ctx context.Context, img Image) error) (err error) {
	p, err := s.CloneTemp(ctx, name, name)
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			if aerr := p.Abort(); aerr != nil && err == nil {
				err = aerr
			}
		}
	}()
	if err := apply(ctx, p); err != nil {
		return errors.Wrapf(err, "imagestore: apply to %s", name)
	}
	committed = true
	return p.Commit(ctx)
}

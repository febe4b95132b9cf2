package imagestore

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sort"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
)

// DirOptions tunes a Dir. The zero value is the production setting.
type DirOptions struct {
	// Perm is the mode of new image files; 0 means 0600 (images hold a
	// volume's data).
	Perm os.FileMode
	// NoReflink makes Clone write a physical copy with read and write,
	// even where the file system could share blocks. It also avoids
	// copy_file_range, which XFS and btrfs turn into a reflink. Use it to
	// measure copies, or to keep images from sharing extents.
	NoReflink bool
	// Logger receives a line per clone and the detected capabilities; nil
	// means slog.Default().
	Logger *slog.Logger
}

// Dir is a Store that keeps each image as a sparse file in one directory.
// The directory should hold nothing but images: List reports every
// regular file with a valid name. Dir is safe for concurrent use.
type Dir struct {
	path string
	perm os.FileMode
	caps Capabilities
	copy copier
	log  *slog.Logger
}

var _ Store = (*Dir)(nil)

// OpenDir opens the store in path, an existing directory, and detects once
// what its file system can do: it clones a probe file with FICLONE and
// punches a hole in it. It does not create the directory, so that a store
// whose file system is not mounted fails instead of filling the parent.
func OpenDir(ctx context.Context, path string, opts *DirOptions) (*Dir, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var o DirOptions
	if opts != nil {
		o = *opts
	}
	if o.Perm == 0 {
		o.Perm = 0o600
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, errors.Wrapf(err, "imagestore: open dir %s", path)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, errors.Wrapf(err, "imagestore: open dir %s", abs)
	}
	if !fi.IsDir() {
		return nil, errors.Wrap(ErrNotDir, abs)
	}
	fs, err := fsType(abs)
	if err != nil {
		return nil, err
	}
	reflink, punch, err := probe(abs, o.Perm)
	if err != nil {
		return nil, err
	}
	d := &Dir{
		path: abs,
		perm: o.Perm,
		caps: Capabilities{Backend: "dir", FSType: fs, Reflink: reflink && !o.NoReflink, PunchHole: punch},
		copy: copier{
			reflink:    reflink && !o.NoReflink,
			copyRange:  !o.NoReflink,
			cloneChunk: defaultCloneChunk,
			copyChunk:  defaultCopyChunk,
			log:        o.Logger,
		},
		log: o.Logger,
	}
	d.log.Info("imagestore: opened", "dir", abs, "fs", fs, "reflink", d.caps.Reflink, "punch", punch)
	return d, nil
}

// Root returns the directory of the store.
func (d *Dir) Root() string { return d.path }

// Capabilities returns what OpenDir detected.
func (d *Dir) Capabilities() Capabilities { return d.caps }

// Path returns the file of an image.
func (d *Dir) Path(name string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	return filepath.Join(d.path, name), nil
}

// Create makes a sparse image: a temporary file is sized, synced and
// renamed to name (refusing to replace), then the directory is synced.
func (d *Dir) Create(ctx context.Context, name string, size int64) (Image, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, errors.Wrapf(ErrOutOfRange, "create %s: size %d", name, size)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := d.mustNotExist(name); err != nil {
		return nil, err
	}
	f, tmp, err := createTempFile(d.path, name, d.perm)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, errors.Wrapf(err, "imagestore: create %s", name)
	}
	if err := d.commit(f, tmp, name, false); err != nil {
		f.Close()
		return nil, err
	}
	return d.wrap(f, name, false)
}

// Open opens an image.
func (d *Dir) Open(ctx context.Context, name string, mode Mode) (Image, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	flag := os.O_RDONLY
	if mode == ReadWrite {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(filepath.Join(d.path, name), flag, 0)
	if os.IsNotExist(err) {
		return nil, errors.Wrap(ErrNotFound, name)
	}
	if err != nil {
		return nil, errors.Wrapf(err, "imagestore: open %s", name)
	}
	return d.wrap(f, name, mode != ReadWrite)
}

func (d *Dir) wrap(f *os.File, name string, readOnly bool) (Image, error) {
	img, err := newFileImage(f, name, readOnly)
	if err != nil {
		f.Close()
		return nil, err
	}
	return img, nil
}

// Clone copies src to a new image dst: FICLONERANGE where the file system
// shares blocks, otherwise a copy of src's data extents that keeps its
// holes. The copy is made under a temporary name, synced and renamed, so a
// crash never leaves a partial dst.
func (d *Dir) Clone(ctx context.Context, src, dst string) (Image, error) {
	if err := ValidName(dst); err != nil {
		return nil, err
	}
	if err := d.mustNotExist(dst); err != nil {
		return nil, err
	}
	p, err := d.cloneTemp(ctx, src, dst)
	if err != nil {
		return nil, err
	}
	if err := d.commit(p.f, p.tmpPath, dst, false); err != nil {
		p.f.Close()
		return nil, err
	}
	return p.fileImage, nil
}

// CloneTemp copies src like Clone, under a temporary name.
func (d *Dir) CloneTemp(ctx context.Context, src, dst string) (Pending, error) {
	p, err := d.cloneTemp(ctx, src, dst)
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (d *Dir) cloneTemp(ctx context.Context, src, dst string) (*pendingImage, error) {
	if err := ValidName(src); err != nil {
		return nil, err
	}
	if err := ValidName(dst); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sf, err := os.Open(filepath.Join(d.path, src))
	if os.IsNotExist(err) {
		return nil, errors.Wrap(ErrNotFound, src)
	}
	if err != nil {
		return nil, errors.Wrapf(err, "imagestore: open %s", src)
	}
	defer sf.Close()
	srcImg, err := newFileImage(sf, src, true)
	if err != nil {
		return nil, err
	}
	tf, tmp, err := createTempFile(d.path, dst, d.perm)
	if err != nil {
		return nil, err
	}
	method, err := d.copy.copyFile(ctx, sf, tf, srcImg.size)
	if err != nil {
		tf.Close()
		os.Remove(tmp)
		return nil, errors.Wrapf(err, "imagestore: clone %s to %s", src, dst)
	}
	img, err := newFileImage(tf, dst, false)
	if err != nil {
		tf.Close()
		os.Remove(tmp)
		return nil, err
	}
	d.log.Debug("imagestore: cloned", "dir", d.path, "src", src, "dst", dst, "bytes", srcImg.size, "method", method)
	return &pendingImage{fileImage: img, d: d, tmpPath: tmp, target: dst, method: method}, nil
}

// testCrash, when set by a test, is called at each durability step of a
// commit; returning true stops the commit there as if the process had
// died: nothing is undone.
var testCrash func(step string) bool

var errSimulatedCrash = errors.New("imagestore: simulated crash")

func crashAt(step string) bool { return testCrash != nil && testCrash(step) }

// commit makes the temporary file f (at tmp) durable under name: fsync the
// file, rename, fsync the directory. Without replace an existing name is
// an ErrExist. A failure before the rename removes the temporary file; f
// stays open for the caller either way.
func (d *Dir) commit(f *os.File, tmp, name string, replace bool) error {
	if crashAt("written") {
		return errSimulatedCrash
	}
	if err := f.Sync(); err != nil {
		os.Remove(tmp)
		return errors.Wrapf(err, "imagestore: sync %s", name)
	}
	if crashAt("synced") {
		return errSimulatedCrash
	}
	final := filepath.Join(d.path, name)
	var err error
	if replace {
		err = os.Rename(tmp, final)
	} else {
		err = renameNoReplace(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		if errors.Is(err, unix.EEXIST) {
			return errors.Wrap(ErrExist, name)
		}
		return errors.Wrapf(err, "imagestore: rename to %s", name)
	}
	if crashAt("renamed") {
		return errSimulatedCrash
	}
	return syncDir(d.path)
}

// renameNoReplace renames without replacing an existing target, using
// renameat2(RENAME_NOREPLACE) where the file system has it. Elsewhere it
// checks and renames, which is only racy against other writers of the
// same directory, something Dir's contract excludes.
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if err == nil || !(errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)) {
		return err
	}
	if _, err := os.Lstat(to); err == nil {
		return unix.EEXIST
	} else if !os.IsNotExist(err) {
		return err
	}
	return unix.Rename(from, to)
}

func (d *Dir) mustNotExist(name string) error {
	_, err := os.Lstat(filepath.Join(d.path, name))
	if err == nil {
		return errors.Wrap(ErrExist, name)
	}
	if !os.IsNotExist(err) {
		return errors.Wrapf(err, "imagestore: stat %s", name)
	}
	return nil
}

// Rename renames an image without replacing one, then syncs the directory.
func (d *Dir) Rename(ctx context.Context, from, to string) error {
	if err := ValidName(from); err != nil {
		return err
	}
	if err := ValidName(to); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := renameNoReplace(filepath.Join(d.path, from), filepath.Join(d.path, to))
	switch {
	case errors.Is(err, unix.ENOENT):
		return errors.Wrap(ErrNotFound, from)
	case errors.Is(err, unix.EEXIST):
		return errors.Wrap(ErrExist, to)
	case err != nil:
		return errors.Wrapf(err, "imagestore: rename %s to %s", from, to)
	}
	return syncDir(d.path)
}

// Remove deletes an image and syncs the directory.
func (d *Dir) Remove(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := os.Remove(filepath.Join(d.path, name))
	if os.IsNotExist(err) {
		return errors.Wrap(ErrNotFound, name)
	}
	if err != nil {
		return errors.Wrapf(err, "imagestore: remove %s", name)
	}
	return syncDir(d.path)
}

// List returns the regular files with valid image names, sorted.
func (d *Dir) List(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(d.path)
	if err != nil {
		return nil, errors.Wrap(err, "imagestore: list")
	}
	names := []string{}
	for _, e := range ents {
		if e.Type().IsRegular() && ValidName(e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// Resize grows an image with ftruncate (the new area is a hole, reading
// as zeros) and fsyncs it, so the new size survives a crash.
func (d *Dir) Resize(ctx context.Context, name string, size int64) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(d.path, name), os.O_RDWR, 0)
	if os.IsNotExist(err) {
		return errors.Wrap(ErrNotFound, name)
	}
	if err != nil {
		return errors.Wrapf(err, "imagestore: open %s", name)
	}
	defer f.Close()
	img, err := newFileImage(f, name, false)
	if err != nil {
		return err
	}
	switch {
	case size < img.size:
		return errors.Wrapf(ErrShrink, "%s: %d to %d bytes", name, img.size, size)
	case size == img.size:
		return nil
	}
	if err := f.Truncate(size); err != nil {
		return errors.Wrapf(err, "imagestore: resize %s", name)
	}
	if err := f.Sync(); err != nil {
		return errors.Wrapf(err, "imagestore: sync %s", name)
	}
	return nil
}

// CleanTemps removes the temporary files in the directory: pending images
// and capability probes left by a crash. It must not run while another
// process, or another Dir on the same directory, has a CloneTemp open.
func (d *Dir) CleanTemps(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(d.path)
	if err != nil {
		return nil, errors.Wrap(err, "imagestore: clean temps")
	}
	var gone []string
	for _, e := range ents {
		if !IsTempName(e.Name()) || e.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(d.path, e.Name())); err != nil && !os.IsNotExist(err) {
			return gone, errors.Wrap(err, "imagestore: clean temps")
		}
		gone = append(gone, e.Name())
		d.log.Info("imagestore: removed leftover temporary image", "dir", d.path, "file", e.Name())
	}
	if len(gone) > 0 {
		if err := syncDir(d.path); err != nil {
			return gone, err
		}
	}
	return gone, nil
}

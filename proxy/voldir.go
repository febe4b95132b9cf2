package proxy

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
)

// Names inside a volume directory (system.md §4.2).
const (
	sizeFileName   = "size"
	archiveExt     = ".archive"
	receivedName   = "received"
	sendtoName     = "sendto"
	clearingSuffix = ".clearing"
	dirPerm        = 0o755
	filePerm       = 0o644
)

// volDir is the path of one volume directory, <base>/<vol>.
type volDir string

func (d volDir) sizePath() string               { return filepath.Join(string(d), sizeFileName) }
func (d volDir) archivePath(name string) string { return filepath.Join(string(d), name+archiveExt) }
func (d volDir) receivedDir() string            { return filepath.Join(string(d), receivedName) }
func (d volDir) sendtoRoot() string             { return filepath.Join(string(d), sendtoName) }
func (d volDir) sendtoDir(archive string) string {
	return filepath.Join(string(d), sendtoName, archive)
}

// createVolDir makes an empty volume directory: size 0, received/ and
// sendto/. Each step is durable before the next, so a crash leaves a
// directory without archive infos, which recovery removes.
func createVolDir(d volDir) error {
	if err := os.Mkdir(string(d), dirPerm); err != nil && !os.IsExist(err) {
		return errors.Wrap(err, "proxy: create volume directory")
	}
	if err := meta.SyncDir(filepath.Dir(string(d))); err != nil {
		return err
	}
	for _, sub := range []string{d.receivedDir(), d.sendtoRoot()} {
		if err := os.Mkdir(sub, dirPerm); err != nil && !os.IsExist(err) {
			return errors.Wrap(err, "proxy: create volume directory")
		}
	}
	if err := meta.SyncDir(string(d)); err != nil {
		return err
	}
	if _, err := os.Stat(d.sizePath()); os.IsNotExist(err) {
		return saveSize(d, 0)
	}
	return nil
}

// removeVolDir deletes a volume directory. It is first renamed to
// <vol>.clearing, which no volume can be named, so a crash never leaves a
// half-deleted volume that recovery would load; recovery finishes the job.
func removeVolDir(d volDir) error {
	gone := string(d) + clearingSuffix
	if err := os.RemoveAll(gone); err != nil {
		return errors.Wrap(err, "proxy: remove volume directory")
	}
	if err := os.Rename(string(d), gone); err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return errors.Wrap(err, "proxy: remove volume directory")
	}
	if err := meta.SyncDir(filepath.Dir(string(d))); err != nil {
		return err
	}
	if err := os.RemoveAll(gone); err != nil {
		return errors.Wrap(err, "proxy: remove volume directory")
	}
	return meta.SyncDir(filepath.Dir(string(d)))
}

// saveSize persists the volume size in LB (u64).
func saveSize(d volDir, sizeLb uint64) error {
	return meta.SaveFunc(d.sizePath(), func(e *meta.Encoder) error { return e.U64(sizeLb) })
}

// loadSize reads the volume size in LB.
func loadSize(d volDir) (uint64, error) {
	var v uint64
	err := meta.LoadFunc(d.sizePath(), func(dec *meta.Decoder) error {
		var err error
		v, err = dec.U64()
		return err
	})
	return v, errors.WithMessage(err, "proxy: load size")
}

func saveArchiveInfo(d volDir, name string, a ArchiveInfo) error {
	return meta.Save(d.archivePath(name), a)
}

func loadArchiveInfo(d volDir, name string) (ArchiveInfo, error) {
	var a ArchiveInfo
	if err := meta.Load(d.archivePath(name), &a); err != nil {
		return ArchiveInfo{}, errors.WithMessagef(err, "proxy: load archive info %s", name)
	}
	return a, nil
}

// archiveNames lists the archive infos of a volume directory.
func archiveNames(d volDir) ([]string, error) {
	ents, err := os.ReadDir(string(d))
	if err != nil {
		return nil, errors.Wrap(err, "proxy: list archive infos")
	}
	var names []string
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), archiveExt)
		if !ok || !e.Type().IsRegular() || ValidateArchiveName(name) != nil {
			continue
		}
		names = append(names, name)
	}
	return names, nil
}

// volumeNames lists the volume directories of the base directory and
// finishes the removal of those an earlier clear left behind.
func volumeNames(base string) ([]string, error) {
	ents, err := os.ReadDir(base)
	if err != nil {
		return nil, errors.Wrap(err, "proxy: list base directory")
	}
	var names []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if vol, ok := strings.CutSuffix(e.Name(), clearingSuffix); ok && server.ValidateVolumeName(vol) == nil {
			if err := os.RemoveAll(filepath.Join(base, e.Name())); err != nil {
				return nil, errors.Wrap(err, "proxy: finish clearing a volume")
			}
			continue
		}
		if server.ValidateVolumeName(e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// sameFile reports whether a and b name the same inode.
func sameFile(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(sa, sb), nil
}

// tempName returns a fresh name of the form meta.CleanTemps removes.
func tempName() string {
	const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	var b [6]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = alnum[int(b[i])%len(alnum)]
	}
	return "tmp" + string(b[:])
}

// linkFile makes dir/name a hard link to src. An existing dir/name that is
// another file is replaced atomically (link to a temporary name, rename
// over it); one that already is src is left alone. The directory is not
// synced here.
func linkFile(src, dir, name string) error {
	dst := filepath.Join(dir, name)
	err := os.Link(src, dst)
	if err == nil || !os.IsExist(err) {
		return errors.Wrap(err, "proxy: hard link")
	}
	if same, serr := sameFile(src, dst); serr == nil && same {
		return nil
	}
	for range 10 {
		tmp := filepath.Join(dir, tempName())
		if err = os.Link(src, tmp); os.IsExist(err) {
			continue
		}
		if err != nil {
			return errors.Wrap(err, "proxy: hard link")
		}
		if err = os.Rename(tmp, dst); err != nil {
			os.Remove(tmp)
			return errors.Wrap(err, "proxy: hard link")
		}
		return nil
	}
	return errors.Wrap(err, "proxy: hard link: no free temporary name")
}

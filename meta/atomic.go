package meta

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/pkg/errors"
)

// Temporary files follow walb-tools (mkstemp "tmpXXXXXX"): the prefix "tmp"
// and six characters from [A-Za-z0-9], in the directory of the final file, so
// the rename stays inside one file system and a restart can find leftovers.
const (
	tempPrefix    = "tmp"
	tempSuffixLen = 6
	tempAlphabet  = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
)

// IsTempName reports whether name has the form of a temporary file.
func IsTempName(name string) bool {
	if len(name) != len(tempPrefix)+tempSuffixLen || name[:len(tempPrefix)] != tempPrefix {
		return false
	}
	for i := len(tempPrefix); i < len(name); i++ {
		c := name[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// testCrash, when set by a test, is called at each durability step; if it
// returns true the operation stops there as if the process died: nothing is
// cleaned up.
var testCrash func(step string) bool

var errSimulatedCrash = errors.New("meta: simulated crash")

func crashAt(step string) bool { return testCrash != nil && testCrash(step) }

// TempFile is a file being written under a temporary name. Commit makes it
// durable under its final name; Abort discards it.
type TempFile struct {
	*os.File
	dir  string
	perm os.FileMode
	done bool
}

// CreateTemp creates a new temporary file tmpXXXXXX in dir. perm is applied
// exactly (not filtered by the umask) when the file is committed.
func CreateTemp(dir string, perm os.FileMode) (*TempFile, error) {
	var rnd [tempSuffixLen]byte
	for try := 0; try < 100; try++ {
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, errors.Wrap(err, "meta: temp name")
		}
		name := []byte(tempPrefix)
		for _, b := range rnd {
			name = append(name, tempAlphabet[int(b)%len(tempAlphabet)])
		}
		p := filepath.Join(dir, string(name))
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if os.IsExist(err) {
			continue
		}
		if err != nil {
			return nil, errors.Wrap(err, "meta: create temp")
		}
		return &TempFile{File: f, dir: dir, perm: perm}, nil
	}
	return nil, errors.Errorf("meta: no free temp name in %s", dir)
}

// Commit fsyncs the file, sets its permissions, renames it to path (which
// must be in the same directory) and fsyncs the directory. After Commit
// returns nil the new content survives a crash.
func (t *TempFile) Commit(path string) error {
	if t.done {
		return errors.New("meta: temp file already committed or aborted")
	}
	if filepath.Clean(filepath.Dir(path)) != filepath.Clean(t.dir) {
		return errors.Errorf("meta: commit %s: not in the temp file's directory %s", path, t.dir)
	}
	t.done = true
	if crashAt("written") {
		t.File.Close() // a dead process holds no descriptors
		return errSimulatedCrash
	}
	err := t.File.Sync()
	if err == nil {
		err = t.File.Chmod(t.perm)
	}
	if cerr := t.File.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(t.Name())
		return errors.Wrapf(err, "meta: commit %s", path)
	}
	if crashAt("synced") {
		return errSimulatedCrash
	}
	if err := os.Rename(t.Name(), path); err != nil {
		os.Remove(t.Name())
		return errors.Wrapf(err, "meta: commit %s", path)
	}
	if crashAt("renamed") {
		return errSimulatedCrash
	}
	return SyncDir(t.dir)
}

// Abort closes and removes the temporary file. It is a no-op after Commit.
func (t *TempFile) Abort() error {
	if t.done {
		return nil
	}
	t.done = true
	t.File.Close()
	if err := os.Remove(t.Name()); err != nil && !os.IsNotExist(err) {
		return errors.Wrap(err, "meta: abort temp")
	}
	return nil
}

// SyncDir fsyncs a directory so that renames and unlinks in it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return errors.Wrap(err, "meta: sync dir")
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return errors.Wrapf(err, "meta: sync dir %s", dir)
	}
	return nil
}

// WriteFileAtomic replaces path with data so that after a crash the file
// holds either its old content or data, never a mix: write a temporary file
// in the same directory, fsync it, rename it over path, fsync the directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	t, err := CreateTemp(filepath.Dir(path), perm)
	if err != nil {
		return err
	}
	if _, err := t.Write(data); err != nil {
		t.Abort()
		return errors.Wrapf(err, "meta: write %s", path)
	}
	return t.Commit(path)
}

// CleanTemps removes the temporary files (tmpXXXXXX) a crash left in dir and
// returns their names. Call it at startup, before anything creates new ones.
func CleanTemps(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, errors.Wrap(err, "meta: clean temps")
	}
	var gone []string
	for _, e := range ents {
		if !e.Type().IsRegular() || !IsTempName(e.Name()) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !os.IsNotExist(err) {
			return gone, errors.Wrap(err, "meta: clean temps")
		}
		gone = append(gone, e.Name())
	}
	if len(gone) > 0 {
		if err := SyncDir(dir); err != nil {
			return gone, err
		}
	}
	return gone, nil
}

// Metadata files are the cybozu serialization of their value followed by an
// 8-byte integrity trailer: the magic "WBM1" and the CRC-32C of the value
// bytes. walb-tools reads such files unchanged (it stops after the value);
// files written by walb-tools have no trailer and are still accepted.
const (
	trailerMagic uint32 = 0x314d4257 // "WBM1" little-endian
	trailerSize         = 8
	// MaxMetaFileSize bounds what Load reads; metadata files are tiny.
	MaxMetaFileSize = 1 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// SaveFunc writes the value encode produces to path atomically, with the
// integrity trailer.
func SaveFunc(path string, encode func(e *Encoder) error) error {
	var b bytes.Buffer
	e := NewEncoder(&b)
	if err := encode(e); err != nil {
		return errors.Wrapf(err, "meta: save %s", path)
	}
	if err := e.Err(); err != nil {
		return errors.Wrapf(err, "meta: save %s", path)
	}
	sum := crc32.Checksum(b.Bytes(), castagnoli)
	b.Write(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, trailerMagic), sum))
	return WriteFileAtomic(path, b.Bytes(), 0o644)
}

// Save writes v to path atomically (see SaveFunc).
func Save(path string, v Encodable) error {
	return SaveFunc(path, func(e *Encoder) error { return e.Value(v) })
}

// LoadFunc reads path and hands its value bytes to decode, which must
// consume them exactly. A file with a trailer must match its CRC; a file
// without one (written by walb-tools) must decode exactly. Anything else is
// ErrCorrupt and decode's result must not be used.
func LoadFunc(path string, decode func(d *Decoder) error) error {
	f, err := os.Open(path)
	if err != nil {
		return errors.Wrap(err, "meta: load")
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxMetaFileSize+1))
	if err != nil {
		return errors.Wrapf(err, "meta: load %s", path)
	}
	if len(b) > MaxMetaFileSize {
		return errors.Wrapf(ErrCorrupt, "%s: larger than %d bytes", path, MaxMetaFileSize)
	}
	body := b
	if n := len(b); n >= trailerSize && binary.LittleEndian.Uint32(b[n-trailerSize:]) == trailerMagic {
		body = b[:n-trailerSize]
		if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[n-4:]) {
			return errors.Wrapf(ErrCorrupt, "%s: checksum mismatch", path)
		}
	}
	r := bytes.NewReader(body)
	if err := decode(NewDecoder(r)); err != nil {
		return errors.Wrapf(ErrCorrupt, "%s: %v", path, err)
	}
	if r.Len() != 0 {
		return errors.Wrapf(ErrCorrupt, "%s: %d trailing bytes", path, r.Len())
	}
	return nil
}

// Load reads v from path (see LoadFunc). On error the content of v must not
// be used.
func Load(path string, v Decodable) error {
	return LoadFunc(path, func(d *Decoder) error { return d.Value(v) })
}

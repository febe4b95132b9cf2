package devhost

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
)

// RegistryFile is the name of the registry in the base directory.
const RegistryFile = "devices.json"

// RegistryVersion is the version of the registry format written.
const RegistryVersion = 1

// maxRegistrySize bounds the registry file read at start: a few hundred
// bytes per device, so 16 MiB is far beyond any real host and still keeps a
// damaged or hostile file from exhausting memory.
const maxRegistrySize = 16 << 20

// Entry is one registered device: what the daemon needs to reopen it.
type Entry struct {
	Name       string        `json:"name"`
	LogDevice  string        `json:"log_device"`
	DataDevice string        `json:"data_device"`
	Options    CreateOptions `json:"options"`
	// CheckpointIntervalMs is the interval set with set-checkpoint-interval
	// (0: the daemon's default), so that it survives a restart as the
	// kernel driver's sysfs setting does not need to: a userspace device is
	// reopened by this daemon, with the interval last set.
	CheckpointIntervalMs uint32 `json:"checkpoint_interval_ms,omitempty"`
}

type registryFile struct {
	Version int     `json:"version"`
	Devices []Entry `json:"devices"`
}

// Registry is the persistent list of devices of a Host, kept in
// BASE/devices.json. Every change rewrites the whole file atomically
// (temporary file, fsync, rename, fsync of the directory), so after a crash
// the file holds either the old or the new list. It is not safe for
// concurrent use; the Host serialises changes.
type Registry struct {
	path    string
	entries map[string]Entry
}

// LoadRegistry reads the registry of the base directory dir. A missing file
// is an empty registry.
func LoadRegistry(dir string) (*Registry, error) {
	r := &Registry{path: filepath.Join(dir, RegistryFile), entries: map[string]Entry{}}
	f, err := os.Open(r.path)
	if os.IsNotExist(err) {
		return r, nil
	}
	if err != nil {
		return nil, errors.Wrap(err, "devhost: registry")
	}
	defer f.Close()
	dec := json.NewDecoder(&limitedReader{f: f, left: maxRegistrySize})
	dec.DisallowUnknownFields()
	var rf registryFile
	if err := dec.Decode(&rf); err != nil {
		return nil, errors.Wrapf(ErrFailed, "registry %s: %v", r.path, err)
	}
	if dec.More() {
		return nil, errors.Wrapf(ErrFailed, "registry %s: trailing data", r.path)
	}
	if rf.Version != RegistryVersion {
		return nil, errors.Wrapf(ErrVersion, "registry %s has version %d, this daemon reads %d", r.path, rf.Version, RegistryVersion)
	}
	for _, e := range rf.Devices {
		if err := ValidName(e.Name); err != nil {
			return nil, errors.Wrapf(ErrFailed, "registry %s: %v", r.path, err)
		}
		if !filepath.IsAbs(e.LogDevice) || !filepath.IsAbs(e.DataDevice) {
			return nil, errors.Wrapf(ErrFailed, "registry %s: device %s: paths must be absolute", r.path, e.Name)
		}
		if _, dup := r.entries[e.Name]; dup {
			return nil, errors.Wrapf(ErrFailed, "registry %s: device %s is listed twice", r.path, e.Name)
		}
		r.entries[e.Name] = e
	}
	return r, nil
}

type limitedReader struct {
	f    *os.File
	left int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errors.Errorf("larger than %d bytes", maxRegistrySize)
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.f.Read(p)
	l.left -= int64(n)
	return n, err
}

// Entries returns the registered devices sorted by name.
func (r *Registry) Entries() []Entry {
	out := make([]Entry, 0, len(r.entries))
	for _, e := range r.entries {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns the entry named name.
func (r *Registry) Get(name string) (Entry, bool) {
	e, ok := r.entries[name]
	return e, ok
}

// Put adds or replaces e and writes the registry. On failure the registry
// is unchanged, in memory and on disk.
func (r *Registry) Put(e Entry) error {
	old, had := r.entries[e.Name]
	r.entries[e.Name] = e
	if err := r.save(); err != nil {
		if had {
			r.entries[e.Name] = old
		} else {
			delete(r.entries, e.Name)
		}
		return err
	}
	return nil
}

// Remove deletes the entry named name and writes the registry. On failure
// the registry is unchanged.
func (r *Registry) Remove(name string) error {
	old, had := r.entries[name]
	if !had {
		return errors.Wrap(ErrNotFound, name)
	}
	delete(r.entries, name)
	if err := r.save(); err != nil {
		r.entries[name] = old
		return err
	}
	return nil
}

func (r *Registry) save() error {
	rf := registryFile{Version: RegistryVersion, Devices: r.Entries()}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rf); err != nil {
		return errors.Wrap(err, "devhost: encode registry")
	}
	if err := meta.WriteFileAtomic(r.path, buf.Bytes(), 0o600); err != nil {
		return errors.Wrapf(ErrFailed, "write registry %s: %v", r.path, err)
	}
	return nil
}

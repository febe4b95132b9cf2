package meta

import (
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pkg/errors"
)

// BadFile is a *.wdiff entry of a directory that could not be indexed.
type BadFile struct {
	Name string
	Err  error
}

// ScanDir lists the wdiffs of dir from their names: every regular file whose
// name ends in .wdiff is parsed with ParseFileName and gets its size as
// DataSize. Other entries (temporaries, metadata files, subdirectories) are
// ignored. Entries named *.wdiff that do not parse, are not regular files, or
// duplicate the range of an earlier name (in name order) are returned in bad
// and left out. err is set only when the directory cannot be read.
func ScanDir(dir string) (diffs []Diff, bad []BadFile, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, errors.Wrap(err, "meta: scan wdiff dir")
	}
	seen := make(map[[4]uint64]string)
	for _, e := range ents { // os.ReadDir sorts by name
		name := e.Name()
		if !strings.HasSuffix(name, WdiffExt) {
			continue
		}
		if !e.Type().IsRegular() {
			bad = append(bad, BadFile{name, errors.Wrapf(ErrBadName, "%q: not a regular file", name)})
			continue
		}
		d, perr := ParseFileName(name)
		if perr != nil {
			bad = append(bad, BadFile{name, perr})
			continue
		}
		if prev, dup := seen[rangeKey(d)]; dup {
			bad = append(bad, BadFile{name, errors.Wrapf(ErrDuplicate, "%s: same range as %s", name, prev)})
			continue
		}
		info, ierr := e.Info()
		if ierr != nil {
			if os.IsNotExist(ierr) {
				continue // removed while we were scanning
			}
			bad = append(bad, BadFile{name, errors.Wrap(ierr, "meta: stat wdiff")})
			continue
		}
		d.DataSize = uint64(info.Size())
		seen[rangeKey(d)] = name
		diffs = append(diffs, d)
	}
	sort.Slice(diffs, func(i, j int) bool { return diffLess(diffs[i], diffs[j]) })
	return diffs, bad, nil
}

// LoadDir builds the DiffSet of dir from a directory listing, as a server
// does on restart (see ScanDir for what is indexed and what is reported).
func LoadDir(dir string) (*DiffSet, []BadFile, error) {
	diffs, bad, err := ScanDir(dir)
	if err != nil {
		return nil, nil, err
	}
	s, err := NewDiffSet(diffs...)
	if err != nil { // unreachable: ScanDir validated and de-duplicated
		return nil, bad, err
	}
	return s, bad, nil
}

// DiffPath returns the path of d's file in dir.
func DiffPath(dir string, d Diff) (string, error) {
	name, err := FileName(d)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, name), nil
}

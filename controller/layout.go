package controller

import (
	"fmt"
	"strings"

	"github.com/pkg/errors"
)

// Kind is the role of a server in a backup group.
type Kind int

// Server kinds. The zero Kind is invalid, so a Server literal that forgets
// its kind is caught by Layout.Validate.
const (
	KindStorage Kind = iota + 1
	KindProxy
	KindArchive
)

// String returns the host type the server answers to get host-type:
// "storage", "proxy" or "archive".
func (k Kind) String() string {
	switch k {
	case KindStorage:
		return "storage"
	case KindProxy:
		return "proxy"
	case KindArchive:
		return "archive"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// ParseKind parses a host type ("storage", "proxy", "archive").
func ParseKind(s string) (Kind, error) {
	switch s {
	case "storage":
		return KindStorage, nil
	case "proxy":
		return KindProxy, nil
	case "archive":
		return KindArchive, nil
	}
	return 0, errors.Wrapf(ErrWrongKind, "unknown host type %q", s)
}

// Server names one server of a backup group (walb-tools
// ServerConnectionParam). Name is the server's identity in the group: the
// archive name proxies file its diffs under ("archive-info add VOL NAME")
// and the name in messages. Addr is "host:port" (or "unix:/path" for a
// server that no peer needs to reach).
type Server struct {
	Name string
	Addr string
	Kind Kind
}

// String returns "name(kind addr)" for messages.
func (s Server) String() string { return fmt.Sprintf("%s(%s %s)", s.Name, s.Kind, s.Addr) }

// Layout is the server layout of a backup group (walb-tools ServerLayout):
// its storages, its proxies in priority order (the first is the one the
// storages prefer), and its archives, the first being the primary archive
// that full and hash backups go to.
type Layout struct {
	Storages []Server
	Proxies  []Server
	Archives []Server
}

// All returns every server: storages, proxies, then archives.
func (l Layout) All() []Server {
	out := make([]Server, 0, len(l.Storages)+len(l.Proxies)+len(l.Archives))
	out = append(out, l.Storages...)
	out = append(out, l.Proxies...)
	return append(out, l.Archives...)
}

// Primary returns the primary archive, Archives[0].
func (l Layout) Primary() (Server, error) {
	if len(l.Archives) == 0 {
		return Server{}, errors.Wrap(ErrBadLayout, "no archive: the layout has no primary archive")
	}
	return l.Archives[0], nil
}

// Find returns the server called name.
func (l Layout) Find(name string) (Server, bool) {
	for _, s := range l.All() {
		if s.Name == name {
			return s, true
		}
	}
	return Server{}, false
}

// Validate checks that every server sits in the list of its kind and has a
// name and an address, and that names are unique. An empty layout is valid
// (a Controller then only serves the methods that take a Server).
func (l Layout) Validate() error {
	seen := map[string]bool{}
	for _, g := range []struct {
		kind Kind
		list []Server
	}{{KindStorage, l.Storages}, {KindProxy, l.Proxies}, {KindArchive, l.Archives}} {
		for _, s := range g.list {
			if s.Kind != g.kind {
				return errors.Wrapf(ErrBadLayout, "server %q is a %s in the %s list", s.Name, s.Kind, g.kind)
			}
			if s.Name == "" || strings.ContainsAny(s.Name, " \t\r\n") {
				return errors.Wrapf(ErrBadLayout, "server name %q (%s %s): empty or with spaces", s.Name, s.Kind, s.Addr)
			}
			if s.Addr == "" {
				return errors.Wrapf(ErrBadLayout, "server %q has no address", s.Name)
			}
			if seen[s.Name] {
				return errors.Wrapf(ErrBadLayout, "two servers are named %q", s.Name)
			}
			seen[s.Name] = true
		}
	}
	return nil
}

// StorageArgs returns the peer options a storage of this layout is started
// with (walb-tools get_server_params): -archive with the primary archive's
// address and -proxy with the proxies' addresses in priority order.
func (l Layout) StorageArgs() ([]string, error) {
	a0, err := l.Primary()
	if err != nil {
		return nil, err
	}
	if len(l.Proxies) == 0 {
		return nil, errors.Wrap(ErrBadLayout, "no proxy: a storage needs at least one")
	}
	addrs := make([]string, len(l.Proxies))
	for i, p := range l.Proxies {
		addrs[i] = p.Addr
	}
	return []string{"-archive", a0.Addr, "-proxy", strings.Join(addrs, ",")}, nil
}

// needKind checks a server argument's kind.
func needKind(s Server, kinds ...Kind) error {
	for _, k := range kinds {
		if s.Kind == k {
			return nil
		}
	}
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = k.String()
	}
	return errors.Wrapf(ErrWrongKind, "%s: want a %s", s, strings.Join(names, " or "))
}

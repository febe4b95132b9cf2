package controller

import "github.com/pkg/errors"

// Sentinel errors. Errors the servers send back are *wire.RemoteError
// values instead; test them with errors.Is against the wire codes
// (wire.ErrWrongState, wire.ErrNotFound...) or the servers' sentinels.
var (
	// ErrBadLayout means a Layout is unusable: a server of the wrong kind
	// in a list, a duplicate or empty name, an empty address, or no
	// archive where a primary archive is needed.
	ErrBadLayout = errors.New("controller: bad server layout")
	// ErrWrongKind means a method was given a server of a kind that does
	// not have the command (a proxy to Restore, an archive to Snapshot), or
	// a server answered get host-type with another kind than the layout
	// says.
	ErrWrongKind = errors.New("controller: wrong server kind")
	// ErrBadState means a volume is in a state from which the operation
	// cannot proceed (walb-tools raises "bad state" in these places).
	ErrBadState = errors.New("controller: volume in an unexpected state")
	// ErrNotReached means a long operation ended without reaching its goal:
	// the server's action is over but the restored image, the applied base,
	// the merged diff, the replicated snapshot or the new size is not
	// there. The server's log says why (walb-tools servers report failures
	// after accept only there).
	ErrNotReached = errors.New("controller: operation ended without reaching its goal")
	// ErrBadGid means a gid argument does not fit the volume's diffs (apply
	// to a gid that ends no applicable diff, merge bounds that are not diff
	// boundaries, restore of a gid already restored).
	ErrBadGid = errors.New("controller: gid does not fit the volume's diffs")
	// ErrMixedSync means some proxies forward a volume's diffs to an
	// archive and others do not, so the archive is neither synchronizing
	// nor not.
	ErrMixedSync = errors.New("controller: archive is synchronizing on some proxies only")
	// ErrUUIDMismatch means two archives hold a volume of different
	// lineages (their archive UUIDs differ: one got a new full backup
	// since the other was replicated from it), so a plain replication
	// between them is refused; replicate with Resync.
	ErrUUIDMismatch = errors.New("controller: archive uuids differ")
	// ErrBadValue means a server's answer does not parse as the value the
	// command returns.
	ErrBadValue = errors.New("controller: malformed value from server")
	// ErrBadArgs means an argument is out of range before anything is sent
	// (an empty volume name, a shrinking resize, an unknown stop mode).
	ErrBadArgs = errors.New("controller: bad arguments")
)

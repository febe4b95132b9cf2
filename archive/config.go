package archive

import (
	"log/slog"
	"strings"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// DiscardMode says what apply and restore do with discard records
// (walb-tools -discard).
type DiscardMode int

const (
	// DiscardIgnore leaves discarded ranges as they are (the default, as in
	// walb-tools). Restores of ranges that were written and later discarded
	// then depend on how diffs were merged; use DiscardZero where that
	// matters.
	DiscardIgnore DiscardMode = iota
	// DiscardPassdown deallocates discarded ranges in the image (they read
	// as zeros afterwards).
	DiscardPassdown
	// DiscardZero writes zeros over discarded ranges.
	DiscardZero
)

// String returns the -discard option value.
func (m DiscardMode) String() string {
	switch m {
	case DiscardIgnore:
		return "ignore"
	case DiscardPassdown:
		return "passdown"
	case DiscardZero:
		return "zero"
	}
	return "unknown"
}

// ParseDiscardMode parses ignore, passdown or zero.
func ParseDiscardMode(s string) (DiscardMode, error) {
	switch strings.ToLower(s) {
	case "ignore":
		return DiscardIgnore, nil
	case "passdown":
		return DiscardPassdown, nil
	case "zero":
		return DiscardZero, nil
	}
	return 0, errors.Wrapf(ErrBadArgs, "discard mode %q: want ignore, passdown or zero", s)
}

// ApplyMode chooses how apply writes the base image.
type ApplyMode int

const (
	// ApplyAuto clones the base when the image store shares blocks
	// (reflink) and applies in place otherwise.
	ApplyAuto ApplyMode = iota
	// ApplyClone always applies to a clone that replaces the base
	// atomically (imagestore.CloneTemp + Commit): the base is never
	// half-applied, at the price of a full copy without reflink.
	ApplyClone
	// ApplyInPlace writes the base directly under the applying state, as
	// walb-tools does; a crash leaves a mixed image that the minimum list,
	// reapplied, completes.
	ApplyInPlace
)

// String names the mode.
func (m ApplyMode) String() string {
	switch m {
	case ApplyAuto:
		return "auto"
	case ApplyClone:
		return "clone"
	case ApplyInPlace:
		return "in-place"
	}
	return "unknown"
}

// Defaults of Config.
const (
	// DefaultFsyncInterval is walb-tools' -fi: fdatasync every 1 GiB written.
	DefaultFsyncInterval = 1 << 30
	// DefaultMaxWdiffFiles is -wn.
	DefaultMaxWdiffFiles = 1000
)

// Config configures an Engine.
type Config struct {
	// BaseDir holds one directory per volume (walb-tools -b). It must exist.
	BaseDir string
	// Images holds base and restored images (walb-tools' volume group).
	Images imagestore.Store
	// NBD, if not nil, exports every restored image read-only under the
	// name "VOL/GID" while it exists.
	NBD *nbd.Server
	// Logger receives the engine's logs (keys vol, gid). Nil means
	// slog.Default().
	Logger *slog.Logger
	// Discard is what apply and restore do with discard records.
	Discard DiscardMode
	// Apply chooses between applying to a clone or in place.
	Apply ApplyMode
	// FsyncInterval is the number of bytes written between fdatasyncs of
	// images and wdiff files (-fi); 0 means DefaultFsyncInterval.
	FsyncInterval int64
	// MaxOpen bounds the diff files read at once by one apply or restore
	// pass (-maxopen); 0 means no limit. Longer lists take several passes.
	MaxOpen int
	// MaxWdiffFiles bounds the diffs one merge takes (-wn); 0 means
	// DefaultMaxWdiffFiles.
	MaxWdiffFiles int
	// AutoResize grows the base when a sender reports a larger volume
	// (-autoresize); otherwise such a transfer gets smaller-lv-size.
	AutoResize bool
	// MergeCompression is the codec of merged diffs; the zero value means
	// wdiff.DefaultCompression (snappy), as walb-tools writes.
	MergeCompression *wdiff.Compression
	// ClientWire is what the archive dials other archives with (replicate):
	// timeouts and, with TLS, a client configuration (RootCAs, client
	// certificate). Nil means the server's own wire options, which suit
	// plain TCP but rarely TLS.
	ClientWire *wire.Options
}

func (c *Config) fsyncInterval() int64 {
	if c.FsyncInterval <= 0 {
		return DefaultFsyncInterval
	}
	return c.FsyncInterval
}

func (c *Config) maxWdiffFiles() int {
	if c.MaxWdiffFiles <= 0 {
		return DefaultMaxWdiffFiles
	}
	return c.MaxWdiffFiles
}

func (c *Config) mergeCompression() wdiff.Compression {
	if c.MergeCompression == nil {
		return wdiff.DefaultCompression
	}
	return *c.MergeCompression
}

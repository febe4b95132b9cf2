package controller

import (
	"context"
	"strings"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wire"
)

// ValueType is the type of the value frame that follows an ok reply. The
// wire protocol does not announce it, so the client must know it (the
// table of get targets, GetTargetType) or probe for it (ValueAuto).
type ValueType int

// Value types. The Go type Do returns for each is in parentheses.
const (
	// NoValue: the reply is all.
	NoValue ValueType = iota
	// StringValue: one string (string).
	StringValue
	// StringsValue: a string vector ([]string, never nil).
	StringsValue
	// U64Value: an unsigned integer (uint64).
	U64Value
	// BoolValue: a boolean (bool).
	BoolValue
	// RecordValue: one metadata record (meta.Snap, meta.Diff, meta.State or
	// meta.LsidGid, told apart by its preamble).
	RecordValue
	// ValueAuto: one value of any of the types above. The client first
	// expects a string; if another frame arrives, it learns the type from
	// the error and asks again on a new connection, so use it only for
	// commands without side effects (get).
	ValueAuto
)

// String names the type.
func (t ValueType) String() string {
	switch t {
	case NoValue:
		return "none"
	case StringValue:
		return "string"
	case StringsValue:
		return "strings"
	case U64Value:
		return "u64"
	case BoolValue:
		return "bool"
	case RecordValue:
		return "record"
	case ValueAuto:
		return "auto"
	}
	return "unknown"
}

// getTargets lists the type of every get target the walb-go servers
// answer (system.md §3.8, §4.7, §5.10; the servers' get.go files).
// Targets of the same name have the same type on every server.
var getTargets = map[string]ValueType{
	// every server
	"host-type":    StringValue,
	"pid":          U64Value,
	"handler-stat": StringsValue,
	"state":        StringValue,
	"vol":          StringsValue,
	"latest-snap":  StringsValue,
	"uuid":         StringValue,
	"ts-delta":     StringsValue,
	// storage
	"is-overflow": BoolValue,
	"log-usage":   StringsValue,
	// proxy
	"is-wdiff-send-error": BoolValue,
	"proxy-diff":          StringsValue,
	// archive
	"diff":              StringsValue,
	"applicable-diff":   StringsValue,
	"total-diff-size":   U64Value,
	"num-diff":          U64Value,
	"exists-diff":       BoolValue,
	"restored":          StringsValue,
	"cold":              StringsValue,
	"restorable":        StringsValue,
	"meta-snap":         StringValue,
	"meta-state":        StringValue,
	"exists-base-image": BoolValue,
	"archive-uuid":      StringValue,
	"base":              StringValue,
	"base-all":          StringsValue,
	"vol-size":          U64Value,
	"progress":          U64Value,
	"num-action":        U64Value,
	"all-actions":       StringsValue,
	"restored-path":     StringValue,
	"restored-export":   StringValue,
	"volume-group":      StringValue,
	"thinpool":          StringValue,
}

// GetTargetType returns the value type of a get target, or ValueAuto for
// a target this package does not know (a newer server's).
func GetTargetType(target string) ValueType {
	if t, ok := getTargets[target]; ok {
		return t
	}
	return ValueAuto
}

// recvValue receives a value of type t (not NoValue or ValueAuto).
func recvValue(ctx context.Context, c *wire.Conn, t ValueType) (any, error) {
	switch t {
	case StringValue:
		return c.RecvString(ctx)
	case StringsValue:
		return c.RecvStrings(ctx)
	case U64Value:
		return c.RecvU64(ctx)
	case BoolValue:
		return c.RecvBool(ctx)
	case RecordValue:
		var r anyRecord
		if err := c.RecvValue(ctx, &r); err != nil {
			return nil, err
		}
		return r.v, nil
	}
	return nil, errors.Errorf("controller: cannot receive a %s value", t)
}

// typeFromUnexpected reads the frame type out of the error wire returns
// when a frame of another type arrives ("got strings frame, want string
// frame"): that is how ValueAuto learns a value's type without a frame
// peek in package wire.
func typeFromUnexpected(err error) (ValueType, bool) {
	if !errors.Is(err, wire.ErrUnexpectedFrame) {
		return 0, false
	}
	msg := err.Error()
	i := strings.Index(msg, "got ")
	if i < 0 {
		return 0, false
	}
	rest := msg[i+len("got "):]
	j := strings.Index(rest, " frame")
	if j < 0 {
		return 0, false
	}
	for _, c := range []struct {
		f wire.FrameType
		t ValueType
	}{
		{wire.FrameString, StringValue},
		{wire.FrameStrings, StringsValue},
		{wire.FrameU64, U64Value},
		{wire.FrameBool, BoolValue},
		{wire.FrameValue, RecordValue},
	} {
		if rest[:j] == c.f.String() {
			return c.t, true
		}
	}
	return 0, false
}

// anyRecord decodes whichever metadata record a Value frame holds, chosen
// by its preamble. The nested snapshots decode through meta.Snap, so their
// checks are meta's; each record is validated as meta validates it.
type anyRecord struct{ v any }

func (r *anyRecord) DecodeFrom(d *meta.Decoder) error {
	p, err := d.U16()
	if err != nil {
		return err
	}
	switch p {
	case meta.PreambleSnap:
		var s meta.Snap
		s.GidB, _ = d.U64()
		s.GidE, err = d.U64()
		if err != nil {
			return err
		}
		r.v = s
		return s.Validate()
	case meta.PreambleDiff:
		var x meta.Diff
		x.Mergeable, _ = d.Bool()
		x.CompDiff, _ = d.Bool()
		if x.Timestamp, err = recordTime(d); err != nil {
			return err
		}
		d.Value(&x.SnapB)
		d.Value(&x.SnapE)
		x.DataSize, err = d.U64()
		if err != nil {
			return err
		}
		r.v = x
		return x.Validate()
	case meta.PreambleState:
		var st meta.State
		st.IsApplying, _ = d.Bool()
		if st.Timestamp, err = recordTime(d); err != nil {
			return err
		}
		d.Value(&st.SnapB)
		if err := d.Value(&st.SnapE); err != nil {
			return err
		}
		r.v = st
		return st.Validate()
	case meta.PreambleLsidGid:
		var x meta.LsidGid
		x.Mergeable, _ = d.Bool()
		if x.Timestamp, err = recordTime(d); err != nil {
			return err
		}
		x.Lsid, _ = d.U64()
		x.Gid, err = d.U64()
		if err != nil {
			return err
		}
		r.v = x
		return nil
	}
	return errors.Wrapf(ErrBadValue, "record with unknown preamble 0x%04x", p)
}

// recordTime reads a serialized timestamp: UNIX seconds, 0 for unset.
func recordTime(d *meta.Decoder) (time.Time, error) {
	u, err := d.U64()
	switch {
	case err != nil:
		return time.Time{}, err
	case u == 0:
		return time.Time{}, nil
	case u > uint64(meta.MaxTimestamp.Unix()):
		return time.Time{}, errors.Wrapf(ErrBadValue, "record timestamp %d out of range", u)
	}
	return time.Unix(int64(u), 0).UTC(), nil
}

package group

import (
	"context"

	"github.com/walb-go/walb/storage"
	"github.com/walb-go/walb/walb"
)

// storageDevice is how a group's storage sees a device: storage.WalbDevice,
// except that the log is released as soon as the proxy acknowledged it.
//
// A device lets the log go only up to prev_written, the written lsid of
// its last checkpoint, and the storage, reading the real prev_written,
// leaves acknowledged log in the ring until a later checkpoint and looks
// again a second later. Embedded devices have small logs written in bursts,
// so the group reports prev_written as written and, when the storage then
// releases past the last checkpoint, takes a checkpoint first (two
// fdatasyncs per transfer), as the storage does for devices of a walb-dev
// daemon (storage.DevhostDevices).
type storageDevice struct{ storage.WalbDevice }

func (d storageDevice) Lsids(ctx context.Context) (walb.Lsids, error) {
	l, err := d.WalbDevice.Lsids(ctx)
	l.PrevWritten = l.Written
	return l, err
}

func (d storageDevice) SetOldestLsid(ctx context.Context, lsid uint64) error {
	if lsid > d.D.Lsids().PrevWritten {
		// The checkpoint writes the current written lsid, which is at
		// least the one Lsids reported, so lsid becomes releasable.
		if err := d.D.TakeCheckpoint(); err != nil {
			return err
		}
	}
	return d.WalbDevice.SetOldestLsid(ctx, lsid)
}

package storage

import (
	"context"
	"slices"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/server"
)

// The log monitor and the per-volume task (system.md §3.4). A monitored
// volume gets a task when its device's latest lsid moves (after
// monitorDelay, so logs accumulate), when a snapshot is taken, on kick, and
// when the task asks to run again; the task queue runs at most one task per
// volume at a time on -bg workers and retries failures with a doubling
// delay (-delay .. -maxdelay).

func (s *Storage) startMonitoring(v *volume) {
	s.monMu.Lock()
	v.monitored = true
	s.monMu.Unlock()
	s.tasks.Push(v.name)
}

func (s *Storage) stopMonitoring(v *volume) {
	s.monMu.Lock()
	v.monitored = false
	s.monMu.Unlock()
	s.tasks.Remove(v.name)
}

func (s *Storage) isMonitored(v *volume) bool {
	s.monMu.Lock()
	defer s.monMu.Unlock()
	return v.monitored
}

// monitorLoop polls the monitored devices' latest lsid every
// MonitorInterval and queues a task for each that moved.
func (s *Storage) monitorLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.MonitorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		vols := make([]*volume, 0, len(s.vols))
		for _, v := range s.vols {
			vols = append(vols, v)
		}
		s.mu.Unlock()
		for _, v := range vols {
			if !s.isMonitored(v) {
				continue
			}
			dev, err := s.device(ctx, v)
			if err != nil {
				continue // the task reports it
			}
			l, err := dev.Lsids(ctx)
			if err != nil {
				continue
			}
			s.monMu.Lock()
			moved := v.monitored && l.Latest != v.lastLatest
			if moved {
				v.lastLatest = l.Latest
			}
			s.monMu.Unlock()
			if moved {
				s.tasks.PushAfter(v.name, monitorDelay)
			}
		}
	}
}

// noRerun is the "nothing more to do" result of a task step.
const noRerun time.Duration = -1

// RunTask runs the task of volume vol: discard logs on a Standby, send
// them on a Target (or during a backup). The task queue calls it; a task
// that has more to do queues itself again.
func (s *Storage) RunTask(ctx context.Context, vol string) error {
	s.mu.Lock()
	v := s.vols[vol]
	s.mu.Unlock()
	if v == nil || !s.isMonitored(v) {
		return nil
	}
	st := s.states.State(vol)
	var next time.Duration
	var err error
	switch {
	case st == StateStandby:
		next, err = s.removeWlogs(ctx, v)
	case slices.Contains(sendStates, st):
		next, err = s.sendTask(ctx, v)
	default:
		// Between states (a start or stop, the end of a backup): look
		// again when it has settled.
		next = monitorDelay
	}
	if err != nil {
		return errors.WithMessagef(err, "volume %s", vol)
	}
	if next >= 0 && s.isMonitored(v) {
		s.tasks.PushAfter(vol, next)
	}
	return nil
}

// removeWlogs is the Standby's WlogRemove: release every log already on
// the data device.
func (s *Storage) removeWlogs(ctx context.Context, v *volume) (time.Duration, error) {
	end, err := s.states.StartAction(v.name, ActionWlogRemove, server.Guard{States: []string{StateStandby}, NotStopping: true})
	if err != nil {
		// A stop is waiting for the volume to be idle: look again later,
		// in case it gives up (a successful stop ends the monitoring).
		return garbageDelay, nil
	}
	defer end()
	dev, err := s.device(ctx, v)
	if err != nil {
		return noRerun, err
	}
	if over, err := dev.IsLogOverflow(ctx); err != nil {
		return noRerun, err
	} else if over {
		s.log.Warn("standby log overflowed; start standby again to reset it", "vol", v.name)
		return noRerun, nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	l, err := dev.Lsids(ctx)
	if err != nil {
		return noRerun, err
	}
	if l.Oldest < l.PrevWritten {
		if err := dev.SetOldestLsid(ctx, l.PrevWritten); err != nil {
			return noRerun, errors.WithMessage(err, "release log")
		}
	}
	if l.PrevWritten < l.Latest {
		// The rest reaches the data device at a later checkpoint.
		return garbageDelay, nil
	}
	return noRerun, nil
}

// sendTask is WlogSend: one extraction step, after moving an overflowed
// Target to Stopped.
func (s *Storage) sendTask(ctx context.Context, v *volume) (time.Duration, error) {
	dev, err := s.device(ctx, v)
	if err != nil {
		return noRerun, err
	}
	over, err := dev.IsLogOverflow(ctx)
	if err != nil {
		return noRerun, err
	}
	if over {
		return noRerun, s.onOverflow(ctx, v)
	}
	end, err := s.states.StartAction(v.name, ActionWlogSend, server.Guard{States: sendStates, NotStopping: true})
	if err != nil {
		if errors.Is(err, server.ErrStopping) {
			// As in removeWlogs: retry in case the stop gives up.
			return garbageDelay, nil
		}
		return monitorDelay, nil
	}
	defer end()
	return s.sendWlogs(ctx, v, dev)
}

// onOverflow stops a Target whose log overflowed (system.md §3.6): the
// logs it needs are gone, so monitoring ends and the volume waits for a
// hash-bkp. During a backup the backup itself fails at its snapshot.
func (s *Storage) onOverflow(ctx context.Context, v *volume) error {
	s.log.Error("wlog overflow: logs were lost before they were sent; recover with hash-bkp", "vol", v.name)
	tx, err := s.states.Begin(ctx, v.name, StateStopTarget, server.Guard{States: []string{StateTarget}})
	if err != nil {
		return nil // not Target (a backup, or stopping): nothing to change
	}
	defer tx.Rollback()
	s.stopMonitoring(v)
	v.mu.Lock()
	err = v.saveState(StateStopped)
	v.mu.Unlock()
	if err != nil {
		s.startMonitoring(v)
		return err
	}
	return tx.Commit(StateStopped)
}

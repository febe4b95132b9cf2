package archive

import "context"

// runHashCommand runs hash-sync or bhash on the table volume (see
// tableVol.run). Placeholder until the commands exist: only the guard.
func (tv *tableVol) runHashCommand(ctx context.Context, cmd Command) error {
	return tv.env.e.vols.Check(tvol, guard(cmd))
}

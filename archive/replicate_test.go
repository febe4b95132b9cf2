package archive

import "context"

// runReplCommand runs replicate or the repl-sync server side on the table
// volume (see tableVol.run). Placeholder until the commands exist: only
// the guard.
func (tv *tableVol) runReplCommand(ctx context.Context, cmd Command) error {
	return tv.env.e.vols.Check(tvol, guard(cmd))
}

package storage

import (
	"context"
	"strconv"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// Client runs storage commands on a storage Server, as walbc does; the
// controller SDK builds on it. Each call is one connection. Errors the
// server sends are *wire.RemoteError values; test them against wire codes:
// errors.Is(err, wire.ErrWrongState), errors.Is(err, CodeOverflow), ...
type Client struct {
	// Addr is the storage's address ("host:port" or "unix:/path").
	Addr string
	// ID names the client in the server's logs (default "ctl").
	ID string
	// Wire sets timeouts, TLS and keepalive (nil: defaults).
	Wire *wire.Options
}

func (c Client) dial(ctx context.Context, cmd string, args ...string) (*wire.Conn, error) {
	id := c.ID
	if id == "" {
		id = "ctl"
	}
	return wire.Dial(ctx, c.Addr, id, cmd, c.Wire, args...)
}

// expect runs cmd and waits for want (ok or accept).
func (c Client) expect(ctx context.Context, want wire.Reply, cmd string, args ...string) error {
	conn, err := c.dial(ctx, cmd, args...)
	if err != nil {
		return err
	}
	defer conn.Close()
	if want == wire.ReplyAccept {
		return conn.ExpectAccept(ctx)
	}
	return conn.ExpectOK(ctx)
}

// get runs get target args and hands the connection to read the value.
func (c Client) get(ctx context.Context, read func(*wire.Conn) error, target string, args ...string) error {
	conn, err := c.dial(ctx, server.CmdGet, append([]string{target}, args...)...)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.ExpectOK(ctx); err != nil {
		return err
	}
	return read(conn)
}

func (c Client) getString(ctx context.Context, target string, args ...string) (s string, err error) {
	err = c.get(ctx, func(conn *wire.Conn) error { s, err = conn.RecvString(ctx); return err }, target, args...)
	return s, err
}

func (c Client) getStrings(ctx context.Context, target string, args ...string) (v []string, err error) {
	err = c.get(ctx, func(conn *wire.Conn) error { v, err = conn.RecvStrings(ctx); return err }, target, args...)
	return v, err
}

// InitVol runs init-vol VOL WDEV.
func (c Client) InitVol(ctx context.Context, vol, wdev string) error {
	return c.expect(ctx, wire.ReplyOK, CmdInitVol, vol, wdev)
}

// ClearVol runs clear-vol VOL.
func (c Client) ClearVol(ctx context.Context, vol string) error {
	return c.expect(ctx, wire.ReplyOK, CmdClearVol, vol)
}

// ResetVol runs reset-vol VOL GID.
func (c Client) ResetVol(ctx context.Context, vol string, gid uint64) error {
	return c.expect(ctx, wire.ReplyOK, CmdResetVol, vol, strconv.FormatUint(gid, 10))
}

// Start runs start VOL target|standby.
func (c Client) Start(ctx context.Context, vol string, mode Mode) error {
	return c.expect(ctx, wire.ReplyOK, CmdStart, vol, mode.String())
}

// Stop runs stop VOL graceful|force. It returns once the storage accepted
// the stop; poll State for the result.
func (c Client) Stop(ctx context.Context, vol string, force bool) error {
	mode := "graceful"
	if force {
		mode = "force"
	}
	return c.expect(ctx, wire.ReplyAccept, CmdStop, vol, mode)
}

// Snapshot runs snapshot VOL and returns the gid.
func (c Client) Snapshot(ctx context.Context, vol string) (uint64, error) {
	conn, err := c.dial(ctx, CmdSnapshot, vol)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if err := conn.ExpectOK(ctx); err != nil {
		return 0, err
	}
	return conn.RecvU64(ctx)
}

// FullBackup runs full-bkp VOL [BULK] (bulk in bytes; 0 = default). It
// returns once the archive accepted the backup; poll State until Target.
func (c Client) FullBackup(ctx context.Context, vol string, bulk uint64) error {
	return c.expect(ctx, wire.ReplyAccept, CmdFullBkp, bulkArgs(vol, bulk)...)
}

// HashBackup runs hash-bkp VOL [BULK] (bulk in bytes; 0 = default). It
// returns once the archive accepted the backup; poll State until Target.
func (c Client) HashBackup(ctx context.Context, vol string, bulk uint64) error {
	return c.expect(ctx, wire.ReplyAccept, CmdHashBkp, bulkArgs(vol, bulk)...)
}

// Progress runs get progress VOL: the logical blocks the running backup
// has dealt with, 0 when none runs.
func (c Client) Progress(ctx context.Context, vol string) (lb uint64, err error) {
	err = c.get(ctx, func(conn *wire.Conn) error { lb, err = conn.RecvU64(ctx); return err }, GetProgress, vol)
	return lb, err
}

func bulkArgs(vol string, bulk uint64) []string {
	args := []string{vol}
	if bulk != 0 {
		args = append(args, strconv.FormatUint(bulk, 10))
	}
	return args
}

// Resize runs resize VOL SIZE (sizeLB in logical blocks; 0 = the data
// device's size).
func (c Client) Resize(ctx context.Context, vol string, sizeLB uint64) error {
	return c.expect(ctx, wire.ReplyOK, CmdResize, vol, strconv.FormatUint(sizeLB*512, 10))
}

// SetFullScanBps runs set-full-scan-bps BPS.
func (c Client) SetFullScanBps(ctx context.Context, bps uint64) error {
	return c.expect(ctx, wire.ReplyOK, CmdSetFullScanBps, strconv.FormatUint(bps, 10))
}

// Kick runs kick.
func (c Client) Kick(ctx context.Context) error { return c.expect(ctx, wire.ReplyOK, server.CmdKick) }

// HostType runs get host-type.
func (c Client) HostType(ctx context.Context) (string, error) {
	return c.getString(ctx, server.GetHostType)
}

// State runs get state VOL.
func (c Client) State(ctx context.Context, vol string) (string, error) {
	return c.getString(ctx, GetState, vol)
}

// VolumeNames runs get vol.
func (c Client) VolumeNames(ctx context.Context) ([]string, error) {
	return c.getStrings(ctx, GetVol)
}

// IsOverflow runs get is-overflow VOL.
func (c Client) IsOverflow(ctx context.Context, vol string) (b bool, err error) {
	err = c.get(ctx, func(conn *wire.Conn) error { b, err = conn.RecvBool(ctx); return err }, GetIsOverflow, vol)
	return b, err
}

// LogUsage runs get log-usage [VOL] ("" for every volume).
func (c Client) LogUsage(ctx context.Context, vol string) ([]string, error) {
	return c.getStrings(ctx, GetLogUsage, optional(vol)...)
}

// LatestSnap runs get latest-snap [VOL] ("" for every Target volume).
func (c Client) LatestSnap(ctx context.Context, vol string) ([]string, error) {
	return c.getStrings(ctx, GetLatestSnap, optional(vol)...)
}

// UUID runs get uuid VOL.
func (c Client) UUID(ctx context.Context, vol string) (meta.UUID, error) {
	s, err := c.getString(ctx, GetUUID, vol)
	if err != nil {
		return meta.UUID{}, err
	}
	u, err := uuidOf(s)
	return u, errors.WithMessage(err, "storage: get uuid")
}

// TsDelta runs get ts-delta.
func (c Client) TsDelta(ctx context.Context) ([]string, error) { return c.getStrings(ctx, GetTsDelta) }

// Status runs status [VOL] ("" for the global status).
func (c Client) Status(ctx context.Context, vol string) ([]string, error) {
	conn, err := c.dial(ctx, server.CmdStatus, optional(vol)...)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := conn.ExpectOK(ctx); err != nil {
		return nil, err
	}
	return conn.RecvStrings(ctx)
}

func optional(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// GetHostType asks the server at addr for its host type (get host-type).
// It is the proxy heartbeat's check, usable by any ProxyClient.
func GetHostType(ctx context.Context, addr, clientID string, opts *wire.Options) (string, error) {
	return Client{Addr: addr, ID: clientID, Wire: opts}.HostType(ctx)
}

package devhost

import (
	"bufio"
	"context"
	"io"
	"net"
	"path/filepath"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/walb"
)

// Client is a Controller for the devices of a walb-dev daemon: it sends
// each call as one request on a new connection to the daemon's control
// socket. It is safe for concurrent use. The context bounds each call,
// connecting included; cancelling it closes the connection, which does not
// undo an operation the daemon has started (delete-wdev, reset-wal and
// create-wdev run to their end).
type Client struct {
	// Path of the daemon's control socket.
	Path string
}

// NewClient returns a client of the daemon listening on path.
func NewClient(path string) *Client { return &Client{Path: path} }

// exchange sends req and returns the connection positioned after the
// first response line, which it decodes into resp. The caller closes the
// connection.
func (c *Client) exchange(ctx context.Context, req *Request, resp *Response) (net.Conn, *bufio.Reader, error) {
	req.V = ProtocolVersion
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return nil, nil, errors.Wrapf(ErrFailed, "connect to walb-dev at %s: %v", c.Path, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (net.Conn, *bufio.Reader, error) {
		stop()
		conn.Close()
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, err
	}
	if err := writeJSONLine(conn, req); err != nil {
		return fail(errors.Wrapf(ErrFailed, "send %s: %v", req.Op, err))
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	if err := readResponse(br, resp); err != nil {
		return fail(errors.WithMessagef(err, "%s", req.Op))
	}
	// Keep the cancellation hook for streams: the caller's Close ends it.
	return &stoppingConn{Conn: conn, stop: stop}, br, nil
}

type stoppingConn struct {
	net.Conn
	stop func() bool
}

func (s *stoppingConn) Close() error {
	s.stop()
	return s.Conn.Close()
}

func readResponse(br *bufio.Reader, resp *Response) error {
	line, err := readLine(br, maxResponseSize)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return errors.Wrap(ErrProtocol, "the daemon closed the connection without answering")
		}
		if errors.Is(err, ErrTooLarge) {
			return errors.Wrap(ErrProtocol, err.Error())
		}
		return errors.Wrapf(ErrProtocol, "read answer: %v", err)
	}
	if err := decodeStrict(line, resp); err != nil {
		return errors.Wrapf(ErrProtocol, "malformed answer: %v", err)
	}
	if resp.V != ProtocolVersion {
		return errors.Wrapf(ErrVersion, "answer version %d, this client speaks %d", resp.V, ProtocolVersion)
	}
	if !resp.OK {
		return decodeError(resp.Code, resp.Error)
	}
	return nil
}

// call runs one request that has no stream.
func (c *Client) call(ctx context.Context, req Request) (Response, error) {
	var resp Response
	conn, _, err := c.exchange(ctx, &req, &resp)
	if err != nil {
		return resp, err
	}
	conn.Close()
	if resp.Stream {
		return resp, errors.Wrapf(ErrProtocol, "%s: unexpected stream", req.Op)
	}
	return resp, nil
}

func (c *Client) value(ctx context.Context, op, name string) (uint64, error) {
	resp, err := c.call(ctx, Request{Op: op, Name: name})
	if err != nil {
		return 0, err
	}
	if resp.Value == nil {
		return 0, errors.Wrapf(ErrProtocol, "%s: answer without a value", op)
	}
	return *resp.Value, nil
}

func (c *Client) flag(ctx context.Context, op, name string) (bool, error) {
	resp, err := c.call(ctx, Request{Op: op, Name: name})
	if err != nil {
		return false, err
	}
	if resp.Bool == nil {
		return false, errors.Wrapf(ErrProtocol, "%s: answer without a bool", op)
	}
	return *resp.Bool, nil
}

func (c *Client) run(ctx context.Context, req Request) error {
	_, err := c.call(ctx, req)
	return err
}

// CreateWdev implements Controller. Paths are sent as given; relative ones
// are resolved here, since the daemon has another working directory.
func (c *Client) CreateWdev(ctx context.Context, ldev, ddev string, opts CreateOptions) (DeviceInfo, error) {
	var err error
	if ldev, err = absPath(ldev); err != nil {
		return DeviceInfo{}, err
	}
	if ddev, err = absPath(ddev); err != nil {
		return DeviceInfo{}, err
	}
	o := opts
	o.Name = ""
	resp, err := c.call(ctx, Request{Op: "create-wdev", Name: opts.Name, LogDevice: ldev, DataDevice: ddev, Options: &o})
	if err != nil {
		return DeviceInfo{}, err
	}
	if resp.Device == nil {
		return DeviceInfo{}, errors.Wrap(ErrProtocol, "create-wdev: answer without a device")
	}
	return *resp.Device, nil
}

// DeleteWdev implements Controller.
func (c *Client) DeleteWdev(ctx context.Context, name string, force bool) error {
	return c.run(ctx, Request{Op: "delete-wdev", Name: name, Force: force})
}

// List implements Controller.
func (c *Client) List(ctx context.Context) ([]DeviceInfo, error) {
	resp, err := c.call(ctx, Request{Op: "list"})
	if err != nil {
		return nil, err
	}
	if resp.Devices == nil {
		return []DeviceInfo{}, nil
	}
	return resp.Devices, nil
}

// OldestLsid implements Controller.
func (c *Client) OldestLsid(ctx context.Context, name string) (uint64, error) {
	return c.value(ctx, "get-oldest-lsid", name)
}

// WrittenLsid implements Controller.
func (c *Client) WrittenLsid(ctx context.Context, name string) (uint64, error) {
	return c.value(ctx, "get-written-lsid", name)
}

// PermanentLsid implements Controller.
func (c *Client) PermanentLsid(ctx context.Context, name string) (uint64, error) {
	return c.value(ctx, "get-permanent-lsid", name)
}

// CompletedLsid implements Controller.
func (c *Client) CompletedLsid(ctx context.Context, name string) (uint64, error) {
	return c.value(ctx, "get-completed-lsid", name)
}

// Lsids implements Controller. A daemon older than this client answers
// ErrBadRequest (unknown operation).
func (c *Client) Lsids(ctx context.Context, name string) (walb.Lsids, error) {
	resp, err := c.call(ctx, Request{Op: "get-lsids", Name: name})
	if err != nil {
		return walb.Lsids{}, err
	}
	if resp.Lsids == nil {
		return walb.Lsids{}, errors.Wrap(ErrProtocol, "get-lsids: answer without lsids")
	}
	return resp.Lsids.Lsids(), nil
}

// Info implements Controller. A daemon older than this client answers
// ErrBadRequest (unknown operation).
func (c *Client) Info(ctx context.Context, name string) (DeviceStatus, error) {
	resp, err := c.call(ctx, Request{Op: "info", Name: name})
	if err != nil {
		return DeviceStatus{}, err
	}
	if resp.Info == nil {
		return DeviceStatus{}, errors.Wrap(ErrProtocol, "info: answer without info")
	}
	return *resp.Info, nil
}

// SetOldestLsid implements Controller.
func (c *Client) SetOldestLsid(ctx context.Context, name string, lsid uint64) error {
	return c.run(ctx, Request{Op: "set-oldest-lsid", Name: name, Lsid: &lsid})
}

// Freeze implements Controller.
func (c *Client) Freeze(ctx context.Context, name string, timeout time.Duration) error {
	if timeout < 0 {
		return errors.Wrapf(ErrInvalid, "freeze timeout %v", timeout)
	}
	req := Request{Op: "freeze", Name: name}
	if timeout > 0 {
		ms := uint64((timeout + time.Millisecond - 1) / time.Millisecond)
		req.TimeoutMs = &ms
	}
	return c.run(ctx, req)
}

// Melt implements Controller.
func (c *Client) Melt(ctx context.Context, name string) error {
	return c.run(ctx, Request{Op: "melt", Name: name})
}

// IsFrozen implements Controller.
func (c *Client) IsFrozen(ctx context.Context, name string) (bool, error) {
	return c.flag(ctx, "is-frozen", name)
}

// ResetWAL implements Controller.
func (c *Client) ResetWAL(ctx context.Context, name string) error {
	return c.run(ctx, Request{Op: "reset-wal", Name: name})
}

// Resize implements Controller.
func (c *Client) Resize(ctx context.Context, name string, sizeLB uint64) error {
	return c.run(ctx, Request{Op: "resize", Name: name, SizeLB: &sizeLB})
}

// IsLogOverflow implements Controller.
func (c *Client) IsLogOverflow(ctx context.Context, name string) (bool, error) {
	return c.flag(ctx, "is-log-overflow", name)
}

// LogUsage implements Controller.
func (c *Client) LogUsage(ctx context.Context, name string) (uint64, error) {
	return c.value(ctx, "get-log-usage", name)
}

// LogCapacity implements Controller.
func (c *Client) LogCapacity(ctx context.Context, name string) (uint64, error) {
	return c.value(ctx, "get-log-capacity", name)
}

// IsFlushCapable implements Controller.
func (c *Client) IsFlushCapable(ctx context.Context, name string) (bool, error) {
	return c.flag(ctx, "is-flush-capable", name)
}

// TakeCheckpoint implements Controller.
func (c *Client) TakeCheckpoint(ctx context.Context, name string) error {
	return c.run(ctx, Request{Op: "force-checkpoint", Name: name})
}

// CheckpointInterval implements Controller.
func (c *Client) CheckpointInterval(ctx context.Context, name string) (time.Duration, error) {
	ms, err := c.value(ctx, "get-checkpoint-interval", name)
	if err != nil {
		return 0, err
	}
	if ms > uint64(maxDurationMs) {
		return 0, errors.Wrapf(ErrProtocol, "checkpoint interval %d ms", ms)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// SetCheckpointInterval implements Controller. The interval travels in
// whole milliseconds.
func (c *Client) SetCheckpointInterval(ctx context.Context, name string, iv time.Duration) error {
	if iv < 0 {
		return errors.Wrapf(ErrInvalid, "checkpoint interval %v", iv)
	}
	ms := uint64(iv / time.Millisecond)
	return c.run(ctx, Request{Op: "set-checkpoint-interval", Name: name, IntervalMs: &ms})
}

// CatLog implements Controller: the wlog streams from the daemon to w.
func (c *Client) CatLog(ctx context.Context, name string, begin, end uint64, w io.Writer) (uint64, error) {
	req := Request{Op: "cat-log", Name: name}
	if begin != AutoLsid {
		req.Begin = &begin
	}
	if end != AutoLsid {
		req.End = &end
	}
	var resp Response
	conn, br, err := c.exchange(ctx, &req, &resp)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if !resp.Stream {
		return 0, errors.Wrap(ErrProtocol, "cat-log: answer without a stream")
	}
	if err := copyFrames(w, br); err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, err
	}
	var trailer Response
	if err := readResponse(br, &trailer); err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, errors.WithMessage(err, "cat-log")
	}
	if trailer.Value == nil {
		return 0, errors.Wrap(ErrProtocol, "cat-log: trailer without the end lsid")
	}
	return *trailer.Value, nil
}

var _ Controller = (*Client)(nil)

func absPath(p string) (string, error) {
	if p == "" {
		return "", errors.Wrap(ErrInvalid, "empty path")
	}
	a, err := filepath.Abs(p)
	if err != nil {
		return "", errors.Wrapf(ErrInvalid, "path %s: %v", p, err)
	}
	return a, nil
}

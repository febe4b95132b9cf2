package controller

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/wire"
)

// Defaults of Options.
const (
	// DefaultClientID is the id the controller introduces itself with
	// (walb-tools' Controller runs walbc -id ctl).
	DefaultClientID = "ctl"
	// DefaultPollInterval is how often waits ask the servers again
	// (walb-tools: 0.3 s).
	DefaultPollInterval = 300 * time.Millisecond
	// DefaultRetries is how many times status and get are tried again
	// after a transport failure (walbc -retry default).
	DefaultRetries = 2
	// DefaultRetryDelay separates those tries (walbc: 100 ms).
	DefaultRetryDelay = 100 * time.Millisecond
	// DefaultShortTimeout bounds the waits that only follow a state change
	// (start, stop, standby, reset, del-restored, resize), on top of the
	// caller's context (walb-tools SHORT_TIMEOUT_SEC).
	DefaultShortTimeout = 100 * time.Second
)

// Options configure a Controller or a Client. The zero value (or nil) gives
// the defaults above, plain TCP and wire's default timeouts.
type Options struct {
	// ClientID names this side in the servers' logs and handler-stat
	// (walbc -id). Default DefaultClientID.
	ClientID string
	// Wire sets the connection options: TLS, the per-frame I/O timeout
	// (walbc -to), keepalive, frame limits.
	Wire *wire.Options
	// Logger receives one debug line per command (keys peer, cmd, args,
	// reply, dur) and the retries. Default slog.Default().
	Logger *slog.Logger
	// PollInterval is the period of waits. Default DefaultPollInterval.
	PollInterval time.Duration
	// Retries is how many more times status and get are tried after a
	// transport failure (an error reply is never retried: the server
	// answered). Zero means DefaultRetries; negative disables retries.
	Retries int
	// RetryDelay separates the tries. Default DefaultRetryDelay.
	RetryDelay time.Duration
	// ShortTimeout bounds waits for quick state changes; the context
	// bounds everything else. Default DefaultShortTimeout.
	ShortTimeout time.Duration
}

func (o *Options) withDefaults() Options {
	var v Options
	if o != nil {
		v = *o
	}
	if v.ClientID == "" {
		v.ClientID = DefaultClientID
	}
	if v.Logger == nil {
		v.Logger = slog.Default()
	}
	if v.PollInterval <= 0 {
		v.PollInterval = DefaultPollInterval
	}
	switch {
	case v.Retries == 0:
		v.Retries = DefaultRetries
	case v.Retries < 0:
		v.Retries = 0
	}
	if v.RetryDelay <= 0 {
		v.RetryDelay = DefaultRetryDelay
	}
	if v.ShortTimeout <= 0 {
		v.ShortTimeout = DefaultShortTimeout
	}
	return v
}

// Request is one command for Client.Do.
type Request struct {
	// Command and Args are what walbc takes after its options.
	Command string
	Args    []string
	// Value is the type of the value that follows an ok reply.
	Value ValueType
	// ValueOptional accepts an ok reply that is not followed by the value
	// (a server that answers with ok only).
	ValueOptional bool
	// Retry allows trying again after a transport failure. Only for
	// commands that change nothing (status, get).
	Retry bool
}

// Response is a command's answer: ok or accept, and the value, if any,
// whose Go type ValueType lists (nil for NoValue).
type Response struct {
	Reply wire.Reply
	Value any
}

// Client sends commands to one server over package wire: one connection
// per command, as walbc does. It is safe for concurrent use.
type Client struct {
	addr string
	opt  Options
}

// NewClient returns a client of the server at addr ("host:port" or
// "unix:/path").
func NewClient(addr string, opts *Options) *Client {
	return &Client{addr: addr, opt: opts.withDefaults()}
}

// Addr returns the server's address.
func (c *Client) Addr() string { return c.addr }

// Do runs one command and returns the server's answer. An error reply is
// a *wire.RemoteError (errors.Is works against the wire codes); every error
// names the server and the command.
func (c *Client) Do(ctx context.Context, req Request) (Response, error) {
	tries := 1
	if req.Retry {
		tries += c.opt.Retries
	}
	var err error
	for i := 0; i < tries; i++ {
		if i > 0 {
			c.opt.Logger.DebugContext(ctx, "retrying", "peer", c.addr, "cmd", req.Command, "try", i+1, "err", err)
			t := time.NewTimer(c.opt.RetryDelay)
			select {
			case <-ctx.Done():
				t.Stop()
				return Response{}, errors.Wrapf(ctx.Err(), "controller: %s: gave up retrying after: %v", c.what(req), err)
			case <-t.C:
			}
		}
		var resp Response
		resp, err = c.doAuto(ctx, req)
		if err == nil {
			return resp, nil
		}
		if !retryable(ctx, err) {
			break
		}
	}
	return Response{}, errors.WithMessage(err, c.what(req))
}

// doAuto resolves ValueAuto with a second connection when the first guess
// (a string) was wrong.
func (c *Client) doAuto(ctx context.Context, req Request) (Response, error) {
	if req.Value != ValueAuto {
		return c.once(ctx, req)
	}
	req.Value = StringValue
	resp, err := c.once(ctx, req)
	if t, ok := typeFromUnexpected(err); ok {
		req.Value = t
		return c.once(ctx, req)
	}
	return resp, err
}

func (c *Client) once(ctx context.Context, req Request) (resp Response, err error) {
	start := time.Now()
	defer func() {
		c.opt.Logger.DebugContext(ctx, "command", "peer", c.addr, "cmd", req.Command, "args", req.Args,
			"reply", resp.Reply.String(), "dur", time.Since(start), "err", err)
	}()
	conn, err := wire.Dial(ctx, c.addr, c.opt.ClientID, req.Command, c.opt.Wire, req.Args...)
	if err != nil {
		return resp, err
	}
	defer conn.Close()
	if resp.Reply, err = conn.RecvReply(ctx); err != nil {
		return resp, err
	}
	if resp.Reply != wire.ReplyOK || req.Value == NoValue {
		return resp, nil
	}
	v, err := recvValue(ctx, conn, req.Value)
	if err != nil {
		if req.ValueOptional && errors.Is(err, wire.ErrPeerClosed) {
			return resp, nil
		}
		return resp, err
	}
	resp.Value = v
	return resp, nil
}

// retryable reports whether err may pass on a new try: a transport
// failure, not an answer (error reply, unexpected frame) nor the caller
// giving up.
func retryable(ctx context.Context, err error) bool {
	switch {
	case ctx.Err() != nil,
		errors.Is(err, wire.ErrRemote),
		errors.Is(err, wire.ErrUnexpectedFrame),
		errors.Is(err, wire.ErrUnexpectedReply),
		errors.Is(err, wire.ErrBadMagic),
		errors.Is(err, wire.ErrFrameTooLarge),
		errors.Is(err, ErrBadValue):
		return false
	}
	return true
}

func (c *Client) what(req Request) string {
	if len(req.Args) == 0 {
		return c.addr + " " + req.Command
	}
	return c.addr + " " + req.Command + " " + strings.Join(req.Args, " ")
}

// expect runs cmd, which must answer want and no value.
func (c *Client) expect(ctx context.Context, want wire.Reply, cmd string, args ...string) error {
	req := Request{Command: cmd, Args: args}
	resp, err := c.Do(ctx, req)
	if err != nil {
		return err
	}
	if resp.Reply != want {
		return errors.Wrapf(wire.ErrUnexpectedReply, "%s: got %s, want %s", c.what(req), resp.Reply, want)
	}
	return nil
}

// Call runs a synchronous command, which must answer ok.
func (c *Client) Call(ctx context.Context, cmd string, args ...string) error {
	return c.expect(ctx, wire.ReplyOK, cmd, args...)
}

// Accept runs a long command, which must answer accept: the work goes on
// in the server.
func (c *Client) Accept(ctx context.Context, cmd string, args ...string) error {
	return c.expect(ctx, wire.ReplyAccept, cmd, args...)
}

// CallValue runs a command that answers ok and a value of type t.
func (c *Client) CallValue(ctx context.Context, t ValueType, cmd string, args ...string) (any, error) {
	req := Request{Command: cmd, Args: args, Value: t}
	resp, err := c.Do(ctx, req)
	if err != nil {
		return nil, err
	}
	if resp.Reply != wire.ReplyOK {
		return nil, errors.Wrapf(wire.ErrUnexpectedReply, "%s: got %s, want ok", c.what(req), resp.Reply)
	}
	return resp.Value, nil
}

// Get runs get TARGET ARGS... and returns the value, typed as the table of
// targets says (GetTargetType) or as the server sent it for an unknown
// target. Transport failures are retried.
func (c *Client) Get(ctx context.Context, target string, args ...string) (any, error) {
	return c.get(ctx, GetTargetType(target), target, args...)
}

func (c *Client) get(ctx context.Context, t ValueType, target string, args ...string) (any, error) {
	req := Request{Command: "get", Args: append([]string{target}, args...), Value: t, Retry: true}
	resp, err := c.Do(ctx, req)
	if err != nil {
		return nil, err
	}
	if resp.Reply != wire.ReplyOK {
		return nil, errors.Wrapf(wire.ErrUnexpectedReply, "%s: got %s, want ok", c.what(req), resp.Reply)
	}
	return resp.Value, nil
}

// GetString runs a get whose value is a string.
func (c *Client) GetString(ctx context.Context, target string, args ...string) (string, error) {
	v, err := c.get(ctx, StringValue, target, args...)
	s, _ := v.(string)
	return s, err
}

// GetStrings runs a get whose value is a string vector.
func (c *Client) GetStrings(ctx context.Context, target string, args ...string) ([]string, error) {
	v, err := c.get(ctx, StringsValue, target, args...)
	s, _ := v.([]string)
	return s, err
}

// GetU64 runs a get whose value is an unsigned integer.
func (c *Client) GetU64(ctx context.Context, target string, args ...string) (uint64, error) {
	v, err := c.get(ctx, U64Value, target, args...)
	n, _ := v.(uint64)
	return n, err
}

// GetBool runs a get whose value is a boolean.
func (c *Client) GetBool(ctx context.Context, target string, args ...string) (bool, error) {
	v, err := c.get(ctx, BoolValue, target, args...)
	b, _ := v.(bool)
	return b, err
}

// Status runs status [ARGS] and returns its lines. Transport failures are
// retried.
func (c *Client) Status(ctx context.Context, args ...string) ([]string, error) {
	req := Request{Command: "status", Args: args, Value: StringsValue, Retry: true}
	resp, err := c.Do(ctx, req)
	if err != nil {
		return nil, err
	}
	lines, _ := resp.Value.([]string)
	return lines, nil
}

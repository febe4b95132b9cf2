package server

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wire"
)

// Common commands every server answers (system.md §6.2–6.3).
const (
	CmdStatus      = "status"
	CmdGet         = "get"
	CmdShutdown    = "shutdown"
	CmdSleep       = "sleep"
	CmdVersion     = "version"
	CmdHandlerStat = "handler-stat"
	CmdKick        = "kick"
)

// Built-in get targets.
const (
	GetHostType    = "host-type"
	GetPid         = "pid"
	GetHandlerStat = "handler-stat"
)

// maxSleep bounds the sleep command.
const maxSleep = 24 * time.Hour

func (s *Server) registerCommon() {
	s.Handle(CmdStatus, s.cmdStatus)
	s.Handle(CmdGet, s.cmdGet)
	s.Handle(CmdShutdown, s.cmdShutdown)
	s.Handle(CmdSleep, s.cmdSleep)
	s.Handle(CmdVersion, s.cmdVersion)
	s.Handle(CmdHandlerStat, s.cmdHandlerStat)
	s.Handle(CmdKick, s.cmdKick)
	s.HandleGet(GetHostType, func(context.Context, []string) (any, error) { return s.cfg.HostType, nil })
	s.HandleGet(GetPid, func(context.Context, []string) (any, error) { return uint64(os.Getpid()), nil })
	s.HandleGet(GetHandlerStat, func(context.Context, []string) (any, error) { return s.stats.report(), nil })
}

// status: ok, then a string vector. Without arguments: the framework's
// lines, then the service's; with arguments, the service's only.
func (s *Server) cmdStatus(ctx context.Context, c *wire.Conn, args []string) error {
	var lines []string
	if len(args) == 0 {
		lines = s.statusLines()
	}
	if sr, ok := s.svc.(StatusReporter); ok {
		more, err := sr.Status(ctx, args)
		if err != nil {
			return err
		}
		lines = append(lines, more...)
	} else if len(args) > 0 {
		return errors.Wrapf(ErrBadArgs, "status takes no arguments on this server")
	}
	if lines == nil {
		lines = []string{}
	}
	if err := c.SendOK(ctx); err != nil {
		return err
	}
	return c.SendStrings(ctx, lines)
}

// statusLines describes the framework's state.
func (s *Server) statusLines() []string {
	fg := s.fg.InUse()
	lines := []string{
		fmt.Sprintf("server\tid:%s\thostType:%s\tversion:%s\taddr:%s\tstartTime:%s\tuptime:%s",
			s.cfg.ID, s.cfg.HostType, s.cfg.Version, s.Addr(), s.start.UTC().Format(time.RFC3339),
			time.Since(s.start).Truncate(time.Second)),
		fmt.Sprintf("limits\tmaxConns:%d\tconns:%d\tmaxForeground:%d\tforeground:%d\tmaxBackground:%d\ttimeout:%s",
			s.cfg.MaxConns, s.nconns.Load(), s.cfg.MaxForeground, fg, s.cfg.MaxBackground, s.cfg.Wire.IOTimeout),
	}
	tasks := s.tasks.Tasks()
	lines = append(lines, fmt.Sprintf("tasks\tcount:%d", len(tasks)))
	for _, t := range tasks {
		lines = append(lines, t.String())
	}
	return lines
}

// get TARGET args...: ok, then the target's value.
func (s *Server) cmdGet(ctx context.Context, c *wire.Conn, args []string) error {
	if len(args) == 0 {
		return errors.Wrap(ErrBadArgs, "get needs a target")
	}
	h, ok := s.gets[args[0]]
	if !ok {
		return errors.Wrapf(ErrBadArgs, "unknown get target %q", args[0])
	}
	v, err := h(ctx, args[1:])
	if err != nil {
		return err
	}
	if err := checkValue(v); err != nil {
		return errors.WithMessagef(err, "get %s", args[0])
	}
	if err := c.SendOK(ctx); err != nil {
		return err
	}
	return SendValue(ctx, c, v)
}

// checkValue reports whether SendValue can send v.
func checkValue(v any) error {
	switch x := v.(type) {
	case string, []string, uint64, bool, meta.Encodable:
		return nil
	case int:
		if x >= 0 {
			return nil
		}
	case int64:
		if x >= 0 {
			return nil
		}
	default:
		return errors.Errorf("server: cannot send a %T", v)
	}
	return errors.Errorf("server: negative value %v", v)
}

// SendValue sends v in the frame of its type: string, []string, uint64,
// int, int64 (non-negative), bool or meta.Encodable.
func SendValue(ctx context.Context, c *wire.Conn, v any) error {
	if err := checkValue(v); err != nil {
		return err
	}
	switch x := v.(type) {
	case string:
		return c.SendString(ctx, x)
	case []string:
		return c.SendStrings(ctx, x)
	case uint64:
		return c.SendU64(ctx, x)
	case int:
		return c.SendU64(ctx, uint64(x))
	case int64:
		return c.SendU64(ctx, uint64(x))
	case bool:
		return c.SendBool(ctx, x)
	case meta.Encodable:
		return c.SendValue(ctx, x)
	}
	return nil // unreachable: checkValue accepted v
}

// shutdown [graceful|force]: accept, then shut down.
func (s *Server) cmdShutdown(ctx context.Context, c *wire.Conn, args []string) error {
	mode := Graceful
	switch {
	case len(args) == 0 || len(args) == 1 && args[0] == "graceful":
	case len(args) == 1 && args[0] == "force":
		mode = Force
	default:
		return errors.Wrapf(ErrBadArgs, "shutdown [graceful|force], got %q", args)
	}
	if err := c.SendAccept(ctx); err != nil {
		return err
	}
	LoggerFrom(ctx).Info("shutdown requested", "mode", mode.String())
	s.Shutdown(mode)
	return nil
}

// sleep [S]: sleep S seconds (default 0), then ok. For tests of timeouts
// and shutdown.
func (s *Server) cmdSleep(ctx context.Context, c *wire.Conn, args []string) error {
	var d time.Duration
	if len(args) > 1 {
		return errors.Wrapf(ErrBadArgs, "sleep [SECONDS], got %q", args)
	}
	if len(args) == 1 {
		sec, err := strconv.ParseFloat(args[0], 64)
		if err != nil || sec < 0 || sec > maxSleep.Seconds() {
			return errors.Wrapf(ErrBadArgs, "sleep: bad seconds %q", args[0])
		}
		d = time.Duration(sec * float64(time.Second))
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return errors.Wrap(ctx.Err(), "sleep interrupted")
	}
	return c.SendOK(ctx)
}

// version: ok, then the description string.
func (s *Server) cmdVersion(ctx context.Context, c *wire.Conn, _ []string) error {
	if err := c.SendOK(ctx); err != nil {
		return err
	}
	return c.SendString(ctx, s.cfg.Version)
}

// handler-stat: ok, then the statistics lines (also "get handler-stat").
func (s *Server) cmdHandlerStat(ctx context.Context, c *wire.Conn, _ []string) error {
	if err := c.SendOK(ctx); err != nil {
		return err
	}
	return c.SendStrings(ctx, s.stats.report())
}

// kick [args]: the service's kick, then delayed tasks run at once.
func (s *Server) cmdKick(ctx context.Context, c *wire.Conn, args []string) error {
	if k, ok := s.svc.(Kicker); ok {
		if err := k.Kick(ctx, args); err != nil {
			return err
		}
	}
	s.tasks.Kick()
	return c.SendOK(ctx)
}

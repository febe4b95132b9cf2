package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// states is the demo server's state table.
var states = server.MustStateMachine("Clear",
	server.Transition{From: "Clear", Via: "InitVol", To: "Ready"},
	server.Transition{From: "Ready", Via: "ClearVol", To: "Clear"},
)

// demo is a minimal concrete server.
type demo struct {
	srv  *server.Server
	vols *server.Volumes
}

// Recover would rebuild the volumes from the base directory.
func (d *demo) Recover(ctx context.Context) error { return nil }

func (d *demo) initVol(ctx context.Context, c *wire.Conn, args []string) error {
	if len(args) != 1 {
		return errors.Wrap(server.ErrBadArgs, "init-vol VOL")
	}
	vol := args[0]
	if err := server.ValidateVolumeName(vol); err != nil {
		return err
	}
	tx, err := d.vols.Begin(ctx, vol, "InitVol", server.Guard{States: []string{"Clear"}})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// ... create the volume directory and persist "Ready" here ...
	if err := tx.Commit("Ready"); err != nil {
		return err
	}
	return c.SendOK(ctx)
}

func (d *demo) getState(ctx context.Context, args []string) (any, error) {
	if len(args) != 1 {
		return nil, errors.Wrap(server.ErrBadArgs, "get state VOL")
	}
	if err := server.ValidateVolumeName(args[0]); err != nil {
		return nil, err
	}
	return d.vols.State(args[0]), nil
}

func Example() {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(server.Config{ID: "demo", Addr: "127.0.0.1:0", HostType: "demo", Logger: quiet})
	if err != nil {
		panic(err)
	}
	d := &demo{srv: srv, vols: server.NewVolumes(states, quiet)}
	srv.Handle("init-vol", d.initVol)
	srv.HandleGet("state", d.getState)
	if err := srv.Listen(); err != nil {
		panic(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(context.Background(), d) }()

	// A client (what walbc does).
	ctx := context.Background()
	addr := srv.Addr().String()
	run := func(cmd string, args ...string) (*wire.Conn, error) {
		c, err := wire.Dial(ctx, addr, "ctl", cmd, nil, args...)
		if err != nil {
			return nil, err
		}
		if err := c.ExpectOK(ctx); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	c, err := run("init-vol", "vol0")
	fmt.Println("init-vol:", err)
	c.Close()
	_, err = run("init-vol", "vol0")
	fmt.Println("again:", errors.Is(err, wire.ErrWrongState), err)
	c, _ = run("get", "state", "vol0")
	st, _ := c.RecvString(ctx)
	c.Close()
	fmt.Println("state:", st)

	c, _ = wire.Dial(ctx, addr, "ctl", "shutdown", nil, "graceful")
	fmt.Println("shutdown:", c.ExpectAccept(ctx))
	c.Close()
	fmt.Println("run:", <-done)
	// Output:
	// init-vol: <nil>
	// again: true wire: remote: volume vol0 is Ready, not Clear: server: wrong state
	// state: Ready
	// shutdown: <nil>
	// run: <nil>
}

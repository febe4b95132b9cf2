package wire_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/walb-go/walb/wire"
)

// A server that answers "upper" with ok and its argument in upper case,
// and a client that calls it.
func Example() {
	ctx := context.Background()
	l, err := wire.Listen(ctx, "127.0.0.1:0", "example-server", nil)
	if err != nil {
		panic(err)
	}
	defer l.Close()
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		c, err := l.Handshake(ctx, nc, func(cmd string, args []string) error {
			if cmd != "upper" {
				return wire.ErrUnknownCommand
			}
			return nil
		})
		if err != nil {
			return
		}
		if len(c.Args()) != 1 {
			_ = c.SendError(ctx, fmt.Errorf("upper takes one argument: %w", wire.ErrBadRequest))
		} else {
			_ = c.SendOK(ctx)
			_ = c.SendString(ctx, strings.ToUpper(c.Args()[0]))
		}
		_ = c.Finish(ctx)
	}()

	c, err := wire.Dial(ctx, l.Addr().String(), "example-client", "upper", nil, "walb")
	if err != nil {
		panic(err)
	}
	defer c.Close()
	if err := c.ExpectOK(ctx); err != nil {
		panic(err)
	}
	s, err := c.RecvString(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println(c.PeerID(), s)
	// Output: example-server WALB
}

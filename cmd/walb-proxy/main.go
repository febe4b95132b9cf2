// Command walb-proxy is the walb proxy daemon (package proxy): it receives
// wlogs from storages, keeps them as wdiffs queued per archive, and forwards
// them to the archives. Options follow walb-tools' walb-proxy:
//
//	walb-proxy -b BASE_DIR [-p PORT] [-id ID] [-l LOG] [-stop]
//	           [-maxconn 10] [-fg 2] [-bg 1] [-wd 128] [-wn 1000]
//	           [-delay 1] [-maxdelay 300] [-rto 1800] [-to 10]
//	           [-ka] [-kaidle 1800] [-kaintvl 60] [-kacnt 10] [-debug]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/proxy"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

func main() { os.Exit(run(os.Args[1:], os.Stderr)) }

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("walb-proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	port := fs.String("p", "5000", "listen port, or host:port, or unix:/path")
	base := fs.String("b", "", "base directory (required)")
	id := fs.String("id", "", "server id (default: the host name)")
	logPath := fs.String("l", "-", `log file ("-": stderr; a relative path is under the base directory)`)
	stop := fs.Bool("stop", false, "start with every volume Stopped")
	maxConn := fs.Int("maxconn", 10, "maximum concurrent connections")
	fg := fs.Int("fg", 2, "maximum foreground tasks (wlog transfers)")
	bg := fs.Int("bg", 1, "background workers (wdiff sends)")
	wd := fs.Uint64("wd", 128, "maximum MiB of diffs merged into one send")
	wn := fs.Int("wn", 1000, "maximum number of diffs merged into one send")
	delay := fs.Uint("delay", 1, "first retry delay of a send [s]")
	maxDelay := fs.Uint("maxdelay", 300, "maximum retry delay of a send [s]")
	rto := fs.Uint("rto", 1800, "give a failing send up after this long without wlogs [s]")
	timeout := fs.Uint("to", 10, "socket timeout [s]")
	ka := fs.Bool("ka", false, "enable TCP keepalive")
	kaIdle := fs.Uint("kaidle", 1800, "TCP keepalive idle time [s]")
	kaIntvl := fs.Uint("kaintvl", 60, "TCP keepalive probe interval [s]")
	kaCnt := fs.Uint("kacnt", 10, "TCP keepalive probe count")
	debug := fs.Bool("debug", false, "debug logs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "walb-proxy: "+format+"\n", a...)
		return 2
	}
	switch {
	case fs.NArg() > 0:
		return fail("unexpected arguments %q", fs.Args())
	case *base == "":
		return fail("-b BASE_DIR is required")
	case *fg <= 0 || *bg <= 0 || *maxConn <= 0 || *wn <= 0 || *wd == 0 || *timeout == 0:
		return fail("-fg, -bg, -maxconn, -wd, -wn and -to must be positive")
	case *ka && (*kaIdle == 0 || *kaIdle > 86400 || *kaIntvl == 0 || *kaIntvl > 3600 || *kaCnt == 0 || *kaCnt > 100):
		return fail("keepalive: -kaidle 1..86400, -kaintvl 1..3600, -kacnt 1..100")
	}

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	logw := io.Writer(stderr)
	if *logPath != "-" {
		p := *logPath
		if !filepath.IsAbs(p) {
			p = filepath.Join(*base, p)
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fail("log file: %v", err)
		}
		defer f.Close()
		logw = f
	}
	logger := slog.New(server.NewLogHandler(logw, level))

	addr := *port
	if _, err := strconv.ParseUint(addr, 10, 16); err == nil {
		addr = ":" + addr
	}
	wopts := &wire.Options{IOTimeout: time.Duration(*timeout) * time.Second}
	if *ka {
		wopts.KeepAlive = &net.KeepAliveConfig{Enable: true, Idle: time.Duration(*kaIdle) * time.Second,
			Interval: time.Duration(*kaIntvl) * time.Second, Count: int(*kaCnt)}
	}
	s, err := proxy.NewServer(server.Config{
		ID: *id, Addr: addr, MaxConns: *maxConn, MaxForeground: *fg, MaxBackground: *bg,
		Wire: wopts, Logger: logger,
	}, proxy.Config{
		BaseDir:           *base,
		Archive:           proxy.NewArchiveClient(archive.ClientOptions{ClientID: *id, Wire: wopts}),
		MaxWdiffSendSize:  *wd << 20,
		MaxWdiffSendFiles: *wn,
		Delay:             time.Duration(*delay) * time.Second,
		MaxDelay:          time.Duration(*maxDelay) * time.Second,
		RetryTimeout:      time.Duration(*rto) * time.Second,
		StartStopped:      *stop,
		Logger:            logger,
	})
	if err != nil {
		return fail("%v", err)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGABRT)
	defer cancel()
	logger.Info("walb-proxy starting", "args", strings.Join(args, " "))
	if err := s.Run(ctx); err != nil {
		logger.Error("walb-proxy stopped", "err", err)
		return 1
	}
	return 0
}

// Command walb-archive is the archive server of walb-go (walb-tools'
// walb-archive): it keeps each volume's base image and wdiffs, receives
// full backups and diffs, and applies, merges and restores them. Restored
// images can be served read-only over NBD (-nbd).
//
// Usage:
//
//	walb-archive -b BASE_DIR [-p PORT] [-id ID] [-l LOG] [-nbd ADDR] [options]
//
// Run with -h for the options. The server stops on SIGINT, SIGTERM or
// SIGQUIT (a forced shutdown) or on the shutdown command.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

func main() {
	if err := run(); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "walb-archive:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("walb-archive", flag.ContinueOnError)
	port := fs.String("p", "5000", "listen port, or host:port, or unix:/path")
	baseDir := fs.String("b", "", "base directory holding one directory per volume (required)")
	imagesDir := fs.String("images", "", "image store directory (default BASE_DIR/_images)")
	id := fs.String("id", "", "server id (default: host name)")
	logPath := fs.String("l", "-", "log file; - is stderr, a relative path is under BASE_DIR")
	nbdAddr := fs.String("nbd", "", "serve restored images read-only over NBD on this address (export VOL/GID)")
	maxConn := fs.Int("maxconn", 10, "maximum concurrent connections")
	fg := fs.Int("fg", 2, "maximum foreground tasks (transfers, restores, applies, merges)")
	timeout := fs.Int("to", 10, "socket timeout in seconds")
	wn := fs.Int("wn", archive.DefaultMaxWdiffFiles, "maximum number of diffs one merge takes")
	discard := fs.String("discard", "ignore", "discard records on apply/restore: ignore, passdown or zero")
	fi := fs.String("fi", "1g", "fdatasync interval in bytes (k/m/g suffixes)")
	autoResize := fs.Bool("autoresize", false, "grow the base when a sender reports a larger volume")
	maxOpen := fs.Int("maxopen", 0, "maximum diff files read at once by apply and restore (0: no limit)")
	applyMode := fs.String("apply", "auto", "how apply writes the base: auto, clone or in-place")
	debug := fs.Bool("debug", false, "debug logs")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if *baseDir == "" || fs.NArg() != 0 {
		fs.Usage()
		return fmt.Errorf("-b BASE_DIR is required and no positional arguments are taken")
	}
	if *maxConn <= 0 || *fg <= 0 || *timeout <= 0 || *wn <= 0 || *maxOpen < 0 {
		return fmt.Errorf("-maxconn, -fg, -to and -wn must be > 0, -maxopen >= 0")
	}
	dmode, err := archive.ParseDiscardMode(*discard)
	if err != nil {
		return err
	}
	fsync, err := archive.ParseSize(*fi)
	if err != nil || fsync == 0 {
		return fmt.Errorf("-fi %q: want a positive size", *fi)
	}
	amode, err := parseApplyMode(*applyMode)
	if err != nil {
		return err
	}
	logger, closeLog, err := openLog(*logPath, *baseDir, *debug)
	if err != nil {
		return err
	}
	defer closeLog()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT)
	defer stop()

	if *imagesDir == "" {
		*imagesDir = filepath.Join(*baseDir, "_images")
		if err := os.MkdirAll(*imagesDir, 0o700); err != nil {
			return err
		}
	}
	store, err := imagestore.OpenDir(ctx, *imagesDir, &imagestore.DirOptions{Logger: logger})
	if err != nil {
		return err
	}
	var nbdSrv *nbd.Server
	if *nbdAddr != "" {
		nl, err := net.Listen("tcp", *nbdAddr)
		if err != nil {
			return fmt.Errorf("-nbd: %w", err)
		}
		nbdSrv = nbd.NewServer(nbd.Options{Logger: logger})
		go func() {
			if err := nbdSrv.Serve(ctx, nl); err != nil && ctx.Err() == nil {
				logger.Error("NBD server stopped", "err", err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = nbdSrv.Shutdown(sctx)
		}()
	}
	addr := *port
	if _, err := strconv.Atoi(addr); err == nil {
		addr = ":" + addr
	}
	s, err := archive.NewServer(server.Config{
		ID:            *id,
		Addr:          addr,
		MaxConns:      *maxConn,
		MaxForeground: *fg,
		Wire:          &wire.Options{IOTimeout: time.Duration(*timeout) * time.Second},
		Logger:        logger,
	}, archive.Config{
		BaseDir:       *baseDir,
		Images:        store,
		NBD:           nbdSrv,
		Logger:        logger,
		Discard:       dmode,
		Apply:         amode,
		FsyncInterval: int64(fsync),
		MaxOpen:       *maxOpen,
		MaxWdiffFiles: *wn,
		AutoResize:    *autoResize,
	})
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

func parseApplyMode(s string) (archive.ApplyMode, error) {
	for _, m := range []archive.ApplyMode{archive.ApplyAuto, archive.ApplyClone, archive.ApplyInPlace} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("-apply %q: want auto, clone or in-place", s)
}

// openLog opens the log as walb-tools does: "-" is stderr, a relative path
// is placed under the base directory.
func openLog(path, baseDir string, debug bool) (*slog.Logger, func(), error) {
	var w io.Writer = os.Stderr
	closeFn := func() {}
	if path != "-" {
		if !filepath.IsAbs(path) {
			path = filepath.Join(baseDir, path)
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, nil, err
		}
		w = f
		closeFn = func() { _ = f.Close() }
	}
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(server.NewLogHandler(w, level)), closeFn, nil
}

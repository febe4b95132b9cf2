package cli

import (
	"context"
	"github.com/walb-go/walb/server"
	"io"
	"log/slog"
	"os"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/devhost"
)

// WalbDev runs the walb-dev daemon: it opens the userspace walb devices
// registered in its base directory, serves them over NBD and answers wdevc
// on its control socket until SIGTERM or SIGINT (ctx), then closes every
// device with a final checkpoint.
func WalbDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := NewOptions("walb-dev", "Serve userspace WalB devices over NBD; control them with wdevc.")
	var cfg devhost.Config
	var logPath string
	var debug bool
	o.String(&cfg.BaseDir, "b", "BASE_DIR", devhost.DefaultBaseDir, "directory of the device registry")
	o.String(&cfg.NBDAddr, "nbd", "ADDR", devhost.DefaultNBDAddr, "NBD address: HOST:PORT, or a unix socket path")
	o.String(&cfg.ControlSocket, "ctl", "SOCKET", devhost.DefaultControlSocket, "control socket path (mode 0600)")
	o.String(&logPath, "l", "LOG", "-", "log file ('-' for stderr)")
	o.String(&cfg.TLSCert, "tls-cert", "PEM", "", "TLS certificate: clients must then use TLS")
	o.String(&cfg.TLSKey, "tls-key", "PEM", "", "TLS private key")
	o.Bool(&debug, "debug", "log every request")
	if err := parse(o, args, stdout); err != nil {
		return err
	}
	if len(cfg.TLSCert) > 0 != (len(cfg.TLSKey) > 0) {
		return errors.Wrap(ErrUsage, "-tls-cert and -tls-key go together")
	}
	logw := stderr
	if logPath != "-" {
		f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		logw = f
	}
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(server.NewLogHandler(logw, level))
	return devhost.Run(ctx, cfg)
}

func init() {
	Tools["walb-dev"] = WalbDev
}

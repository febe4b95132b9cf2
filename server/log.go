package server

import (
	"io"
	"log/slog"
)

// NewLogHandler returns the text log handler the servers' binaries use. It
// prints error values with their message only: errors wrapped with
// github.com/pkg/errors would otherwise print their stack traces, because
// slog formats values with %+v.
func NewLogHandler(w io.Writer, level slog.Leveler) slog.Handler {
	return slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Value.Kind() == slog.KindAny {
				if err, ok := a.Value.Any().(error); ok && err != nil {
					return slog.String(a.Key, err.Error())
				}
			}
			return a
		},
	})
}

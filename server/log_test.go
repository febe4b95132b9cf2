package server

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
)

func TestLogHandlerPrintsErrorMessagesOnly(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewLogHandler(&buf, slog.LevelInfo))
	log.Info("failed", "err", errors.Wrap(errors.New("inner"), "outer"))
	require.Contains(t, buf.String(), `err="outer: inner"`)
	require.NotContains(t, buf.String(), ".go:")
}

package balancer_test

import (
	"io"
	"log/slog"
	"os"
)

// Tests log only warnings unless BALANCER_TEST_DEBUG is set, which turns on
// debug logs of every component.
func init() {
	level, out := slog.LevelWarn, io.Writer(os.Stderr)
	if os.Getenv("BALANCER_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level})))
}

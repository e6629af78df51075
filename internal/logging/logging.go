// Package logging builds the structured logger of the balancer's commands:
// log/slog in text or JSON, at a level chosen by flag, with a safety net
// that keeps secrets (tokens, private keys) out of the log whatever a
// caller passes it.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// Formats lists the values New accepts for format.
var Formats = []string{"text", "json"}

// Redacted replaces the value of an attribute that holds a secret.
const Redacted = "[REDACTED]"

// secretKeys are attribute keys whose values are never written, in lower
// case. Code should not log secrets at all; this catches the slip.
var secretKeys = map[string]bool{
	"token":         true,
	"admin_token":   true,
	"authorization": true,
	"password":      true,
	"secret":        true,
	"private_key":   true,
	"privkey":       true,
}

// New returns a logger writing to w. format is "text" (the default when
// empty) or "json"; level is "debug", "info" (the default when empty),
// "warn" or "error", as slog.Level parses it (so "info+2" works too). The
// error names the bad value and what is accepted, ready to print.
func New(format, level string, w io.Writer) (*slog.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	return newLogger(format, lvl, w)
}

// NewVar is New with a level that can change while the logger is in use
// (a daemon's reload sets it); the level is level's initial value.
func NewVar(format, level string, w io.Writer) (*slog.Logger, *slog.LevelVar, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, nil, err
	}
	v := new(slog.LevelVar)
	v.Set(lvl)
	l, err := newLogger(format, v, w)
	return l, v, err
}

func newLogger(format string, lvl slog.Leveler, w io.Writer) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: redact}
	switch strings.ToLower(format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want %s", format, strings.Join(Formats, " or "))
}

// ParseLevel parses a log level: debug, info, warn or error; "" is info.
func ParseLevel(s string) (slog.Level, error) {
	if s == "" {
		return slog.LevelInfo, nil
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// redact hides the value of an attribute whose key names a secret, and any
// private key whatever its key.
func redact(_ []string, a slog.Attr) slog.Attr {
	if secretKeys[strings.ToLower(a.Key)] {
		return slog.String(a.Key, Redacted)
	}
	if a.Value.Kind() == slog.KindAny {
		if _, ok := a.Value.Any().(crypto.PrivKey); ok {
			return slog.String(a.Key, Redacted)
		}
	}
	return a
}

package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// DefaultAddr is where the admin listener binds unless told otherwise:
// loopback only.
const DefaultAddr = "127.0.0.1:8242"

// MinTokenLength is the shortest bearer token CheckBind accepts for a
// listener off loopback: long enough that guessing it over HTTP is hopeless
// (`openssl rand -hex 16` makes 32 characters).
const MinTokenLength = 16

// Errors of CheckBind, for errors.Is.
var (
	// ErrNotLoopback: the address is not loopback and public serving
	// was not asked for.
	ErrNotLoopback = errors.New("not a loopback address")
	// ErrNoToken: public serving was asked for without a (long enough)
	// token.
	ErrNoToken = errors.New("no admin token")
)

// CheckBind is the admin listener's binding policy. addr is host:port. A
// loopback host (127.0.0.0/8, ::1 or localhost) is always allowed, with or
// without a token. Any other host, including an empty one or 0.0.0.0
// (every interface), needs public to be true (the operator asked for it
// explicitly) and a token of at least MinTokenLength characters; a host
// name other than localhost counts as not loopback, since what it resolves
// to may change. The error names the flags of `balancer serve`.
func CheckBind(addr string, public bool, token string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin address %q: want HOST:PORT, such as %s: %v", addr, DefaultAddr, err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("admin address %q: bad port: %v", addr, err)
	}
	if isLoopback(host) {
		return nil
	}
	if !public {
		return fmt.Errorf("admin address %s: %w: the admin API would be reachable from the network; bind to %s, or add --admin-public and --admin-token to serve it there with a bearer token", addr, ErrNotLoopback, DefaultAddr)
	}
	if len(token) < MinTokenLength {
		return fmt.Errorf("admin address %s: %w: serving the admin API off loopback needs --admin-token with at least %d characters (for instance from `openssl rand -hex 16`)", addr, ErrNoToken, MinTokenLength)
	}
	return nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Server runs a Handler on an HTTP listener. Set its fields, call Start,
// and Close (or Shutdown) when done.
type Server struct {
	// Addr is host:port to listen on; empty means DefaultAddr. Port 0
	// picks a free port; ListenAddr tells which.
	Addr string
	// Handler serves the requests; its Token is the bearer token that
	// CheckBind requires off loopback. Required.
	Handler *Handler
	// Public allows an Addr that is not loopback, given a token; see
	// CheckBind.
	Public bool
	// Log receives the listener's own errors; nil means slog.Default().
	Log *slog.Logger

	mu        sync.Mutex
	ln        net.Listener
	srv       *http.Server
	done      chan struct{}
	closed    bool
	closeOnce sync.Once
}

// Start checks the binding policy, listens, and serves in the background.
func (s *Server) Start() error {
	if s.Handler == nil {
		return errors.New("admin: Server has no Handler")
	}
	addr := s.Addr
	if addr == "" {
		addr = DefaultAddr
	}
	if err := CheckBind(addr, s.Public, s.Handler.Token); err != nil {
		return err
	}
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	if s.ln != nil {
		return errors.New("admin: Server already started")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	// "localhost" is allowed by name; make sure it did not resolve to
	// something else.
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !s.Public && !tcp.IP.IsLoopback() {
		ln.Close()
		return fmt.Errorf("admin address %s: bound to %s: %w", addr, tcp, ErrNotLoopback)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.With("component", "admin").Handler(), slog.LevelDebug),
	}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin listener stopped", "err", err)
		}
	}()
	log.Info("admin listener started", "addr", ln.Addr().String(), "bearer_auth", s.Handler.Token != "")
	return nil
}

// ListenAddr returns the address the Server listens on, or nil before
// Start.
func (s *Server) ListenAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// URL returns the base URL of the Server, such as http://127.0.0.1:8242,
// or "" before Start.
func (s *Server) URL() string {
	a := s.ListenAddr()
	if a == nil {
		return ""
	}
	return "http://" + a.String()
}

// Shutdown stops accepting connections and waits for requests in flight to
// finish or ctx to be done, then closes the rest. A second Shutdown or
// Close returns net.ErrClosed.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.stop(func(srv *http.Server) error { return srv.Shutdown(ctx) })
}

// Close stops the Server at once. A second Close returns net.ErrClosed.
func (s *Server) Close() error {
	return s.stop(func(srv *http.Server) error { return srv.Close() })
}

func (s *Server) stop(f func(*http.Server) error) error {
	err := net.ErrClosed
	s.closeOnce.Do(func() {
		s.mu.Lock()
		srv, done := s.srv, s.done
		s.closed = true
		s.mu.Unlock()
		if srv == nil {
			err = nil
			return
		}
		err = f(srv)
		if err != nil {
			srv.Close() // Shutdown's context ran out: cut the rest
		}
		<-done
	})
	return err
}

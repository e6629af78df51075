// Package daemon runs the load balancer as a long-lived process, the way
// `balancer serve` does: it turns a Config (a YAML file with command-line
// overrides) into a go-libp2p host serving the balancer protocol, reports
// the addresses to reach it on, and shuts it down gracefully, letting
// streams in flight finish.
//
// Every error Start returns for a bad configuration is a single line that
// names the setting and the value at fault.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/keyfile"
	"github.com/libp2p-balancer/libp2p-balancer/internal/logging"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/metrics"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// Daemon is a running balancer: its host and the balancer protocol on it.
// Create it with Start and stop it with Shutdown or Close.
type Daemon struct {
	cfg   Config
	log   *slog.Logger
	host  host.Host
	lb    *balancer.Balancer
	addrs []ma.Multiaddr
	admin *admin.Server // nil when off

	closeOnce sync.Once
}

// Start checks cfg, loads or creates the identity, listens and starts
// serving. It returns an error before touching the identity file when a
// setting is invalid.
func Start(cfg Config, log *slog.Logger) (*Daemon, error) {
	if log == nil {
		log = slog.Default()
	}
	listen, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	poolOpts, err := cfg.balancerOptions()
	if err != nil {
		return nil, err
	}
	// Metrics: ours and go-libp2p's on one registry, served by the admin
	// listener; recent refusals kept for the status page.
	reg := metrics.NewRegistry()
	tracer, err := metrics.New(reg)
	if err != nil {
		return nil, err
	}
	events := admin.NewEvents(0)
	opts := []balancer.Option{
		balancer.WithTracer(metrics.Tee(tracer, events)),
		balancer.WithLogger(log),
		balancer.WithTTL(cfg.TTLDefault, cfg.TTLMax),
		balancer.WithIdleTimeout(cfg.IdleTimeout),
	}
	opts = append(opts, balancer.WithProbeInterval(cfg.ProbeInterval))
	if cfg.HandshakeTimeout > 0 {
		opts = append(opts, balancer.WithHandshakeTimeout(cfg.HandshakeTimeout))
	}
	if cfg.DialTimeout > 0 {
		opts = append(opts, balancer.WithDialTimeout(cfg.DialTimeout))
	}
	var backends []peer.ID
	for _, a := range cfg.Allow {
		id, _ := a.PeerID() // checked by Check
		backends = append(backends, id)
		opts = append(opts, balancer.WithAllow(id, a.Protocols...))
	}
	opts = append(opts, poolOpts...)
	key, created, err := keyfile.LoadOrCreate(cfg.Identity)
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("identity file %s: %w", cfg.Identity, err)
	}
	h, err := node.New(node.Config{Key: key, Listen: listen, LinkPeers: backends, Options: metrics.Libp2pOptions(reg)})
	if err != nil {
		return nil, err
	}
	lb, err := balancer.New(h, opts...)
	if err != nil {
		h.Close()
		return nil, err
	}
	addrs, err := node.Addrs(h, listen)
	if err != nil {
		lb.Close()
		h.Close()
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: log, host: h, lb: lb, addrs: addrs}
	if cfg.AdminEnabled() {
		token, _ := cfg.AdminToken() // read by Check
		d.admin = &admin.Server{Addr: cfg.Admin, Public: cfg.AdminPublic, Log: log,
			Handler: &admin.Handler{Balancer: lb, Host: h, Gatherer: reg, Events: events, Token: token, Log: log}}
		if err := d.admin.Start(); err != nil {
			lb.Close()
			h.Close()
			return nil, fmt.Errorf("admin %s: %w", cfg.Admin, err)
		}
	}
	// Logged only now, so that a configuration error stays a single line.
	if created {
		log.Info("created a new identity", "file", cfg.Identity, "peer", id)
	}
	log.Info("balancer started", "peer", id, "addrs", len(addrs), "backends", len(backends),
		"ttl_default", cfg.TTLDefault, "ttl_max", cfg.TTLMax)
	for _, a := range cfg.Allow {
		log.Info("backend allowed", "peer", a.Peer, "protocols", allowed(a.Protocols))
	}
	if len(cfg.Allow) == 0 {
		log.Warn("no backend is allowed to register, so nothing is routed yet",
			"how", "get a backend's peer ID with `balancer id --identity backend.key`, then restart with --allow PEER_ID (or PEER_ID=/proto/1.0.0,/other/*), or list it under allow: in the --config file")
	}
	return d, nil
}

func allowed(protos []string) string {
	if len(protos) == 0 {
		return "any"
	}
	return fmt.Sprint(protos)
}

// Check reports the first invalid setting of c, in one line that names it,
// and returns the parsed listen addresses. Start calls it before it touches
// the identity file.
func (c *Config) Check() ([]ma.Multiaddr, error) {
	if len(c.Listen) == 0 {
		return nil, errors.New("listen: no address given")
	}
	listen := make([]ma.Multiaddr, 0, len(c.Listen))
	for _, s := range c.Listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("listen %q: not a multiaddr: %w", s, err)
		}
		listen = append(listen, a)
	}
	for _, a := range c.Allow {
		if _, err := a.PeerID(); err != nil {
			return nil, fmt.Errorf("allow %q: %w", a.String(), err)
		}
		for _, p := range a.Protocols {
			if p == "*" {
				continue
			}
			if err := wire.ValidateProtocol(strings.TrimSuffix(p, "*")); err != nil {
				return nil, fmt.Errorf("allow %q: %w", a.String(), err)
			}
		}
	}
	switch {
	case c.TTLDefault < time.Second:
		return nil, fmt.Errorf("ttl-default %v: must be at least 1s", c.TTLDefault)
	case c.TTLMax < c.TTLDefault:
		return nil, fmt.Errorf("ttl-max %v: must be at least ttl-default (%v)", c.TTLMax, c.TTLDefault)
	case c.TTLMax > time.Duration(math.MaxUint32)*time.Second:
		return nil, fmt.Errorf("ttl-max %v: longer than the wire's uint32 seconds", c.TTLMax)
	case c.DrainTimeout < 0:
		return nil, fmt.Errorf("drain-timeout %v: must not be negative", c.DrainTimeout)
	case c.IdleTimeout < 0:
		return nil, fmt.Errorf("idle-timeout %v: must not be negative", c.IdleTimeout)
	case c.ProbeInterval < 0:
		return nil, fmt.Errorf("probe-interval %v: must not be negative", c.ProbeInterval)
	case c.HandshakeTimeout < 0:
		return nil, fmt.Errorf("handshake-timeout %v: must not be negative", c.HandshakeTimeout)
	case c.DialTimeout < 0:
		return nil, fmt.Errorf("dial-timeout %v: must not be negative", c.DialTimeout)
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		return nil, err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return nil, fmt.Errorf("log-format %q: want text or json", c.LogFormat)
	}
	if _, err := c.balancerOptions(); err != nil {
		return nil, err
	}
	if c.AdminEnabled() {
		token, err := c.AdminToken()
		if err != nil {
			return nil, err
		}
		if err := admin.CheckBind(c.Admin, c.AdminPublic, token); err != nil {
			return nil, fmt.Errorf("admin %s: %w", c.Admin, err)
		}
	}
	if c.Identity == "" {
		return nil, errors.New("identity: no key file given")
	}
	return listen, nil
}

// ID returns the balancer's peer ID.
func (d *Daemon) ID() peer.ID { return d.host.ID() }

// Addrs returns the addresses to reach the balancer on, each ending in
// /p2p/<peer ID>, in the order of Config.Listen.
func (d *Daemon) Addrs() []ma.Multiaddr { return d.addrs }

// Host returns the daemon's host.
func (d *Daemon) Host() host.Host { return d.host }

// Balancer returns the balancer protocol's server.
func (d *Daemon) Balancer() *balancer.Balancer { return d.lb }

// Shutdown stops accepting registrations and new streams, waits for the
// streams in flight to end or ctx to be done, then closes the host. It
// returns ctx's error when streams had to be cut.
func (d *Daemon) Shutdown(ctx context.Context) error {
	active := d.lb.ActiveStreams()
	d.log.Info("shutting down: no new streams; draining those in flight", "active", active)
	err := d.lb.Shutdown(ctx)
	if err != nil {
		d.log.Warn("drain timeout reached; streams in flight were reset", "active", d.lb.ActiveStreams())
	} else if active > 0 {
		d.log.Info("every stream in flight finished")
		node.WaitFlush(ctx)
	}
	d.close()
	return err
}

// Close stops at once, resetting streams in flight. A second Close returns
// net.ErrClosed.
func (d *Daemon) Close() error {
	if err := d.lb.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return d.close()
}

func (d *Daemon) close() error {
	err := net.ErrClosed
	d.closeOnce.Do(func() {
		if d.admin != nil {
			d.admin.Close()
		}
		err = d.host.Close()
	})
	return err
}

// AdminURL returns the admin listener's base URL, or "" when it is off.
func (d *Daemon) AdminURL() string {
	if d.admin == nil {
		return ""
	}
	return d.admin.URL()
}

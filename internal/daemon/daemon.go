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
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/certfile"
	"github.com/libp2p-balancer/libp2p-balancer/internal/keyfile"
	"github.com/libp2p-balancer/libp2p-balancer/internal/logging"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/metrics"
)

// Daemon is a running balancer: its host and the balancer protocol on it.
// Create it with Start and stop it with Shutdown or Close.
type Daemon struct {
	cfg   Config
	log   *slog.Logger
	host  host.Host
	lb    *balancer.Balancer
	addrs []ma.Multiaddr
	admin *admin.Server  // nil when off
	tls   *certfile.Pair // nil without a certificate
	// gater applies the dial policy in force to every dial of the host.
	gater *gater

	// reloadMu makes reloads one at a time; mu guards what they change.
	reloadMu sync.Mutex
	mu       sync.Mutex
	src      Source
	loaded   admin.ConfigInfo

	closeOnce sync.Once
}

// Start checks cfg, loads or creates the identity, listens and starts
// serving. It returns an error before touching the identity file when a
// setting is invalid.
func Start(cfg Config, log *slog.Logger) (*Daemon, error) {
	if log == nil {
		log = slog.Default()
	}
	p, err := cfg.plan()
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
	opts := append(p.opts, balancer.WithTracer(metrics.Tee(tracer, events)), balancer.WithLogger(log))

	key, created, err := keyfile.LoadOrCreate(cfg.Identity)
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("identity file %s: %w", cfg.Identity, err)
	}
	gaterOpts, g := cfg.Outbound.hostOptions()
	hostOpts := append(metrics.Libp2pOptions(reg), gaterOpts...)
	nc := node.Config{Key: key, Listen: p.listen, LinkPeers: p.backends, Options: hostOpts,
		ConnsPerIP: cfg.ConnsPerIP, ProxyNetworks: p.proxies, Limits: cfg.Host, Log: log, Registerer: reg}
	if p.tls != nil {
		nc.TLS = p.tls.TLSConfig()
	}
	d, err := listen(cfg, log, nc, opts)
	if err != nil {
		return nil, err
	}
	d.tls = p.tls
	d.gater = g
	d.loaded.LoadedAt = time.Now()
	if cfg.AdminEnabled() {
		d.admin = &admin.Server{Addr: cfg.Admin, Public: cfg.AdminPublic, Log: log,
			Handler: &admin.Handler{Balancer: d.lb, Host: d.host, Gatherer: reg, Events: events, Token: p.adminToken, Log: log,
				Config: d.configInfo, Reload: func(context.Context) (*admin.ReloadResult, error) { return d.Reload() }}}
		if err := d.admin.Start(); err != nil {
			d.lb.Close()
			d.host.Close()
			return nil, fmt.Errorf("admin %s: %w", cfg.Admin, err)
		}
	}
	// Logged only now, so that a configuration error stays a single line.
	if created {
		log.Info("created a new identity", "file", cfg.Identity, "peer", id)
	}
	if err := keyfile.CheckMode(cfg.Identity); err != nil {
		log.Warn("identity file is open to other users", "err", err)
	}
	d.logStarted(len(p.backends))
	if p.tls != nil {
		log.Info("serving a TLS certificate", "cert", cfg.TLSCert, "subject", p.tls.Leaf().Subject.String(), "not_after", p.tls.NotAfter())
	}
	d.logCapacity(p.backends)
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: "libp2p_balancer",
		Name:      "link_full_total",
		Help:      "Inbound streams a backend could not be offered because its QUIC connections were all at their 256-stream cap and it opened no lane (see balancer.BackendInfo.LinkFull).",
	}, func() float64 {
		var n int64
		for _, b := range d.lb.Backends() {
			n += b.LinkFull
		}
		return float64(n)
	}))
	return d, nil
}

// ReloadCertificate reads the TLS certificate and key files again (after a
// renewal): new secure WebSocket connections get the new pair, and no
// listener or connection is closed. On error the pair in use stays. With no
// certificate configured it does nothing.
func (d *Daemon) ReloadCertificate() error {
	if d.tls == nil {
		return nil
	}
	if err := d.tls.Reload(); err != nil {
		return err
	}
	d.log.Info("TLS certificate reloaded", "cert", d.Config().TLSCert, "subject", d.tls.Leaf().Subject.String(), "not_after", d.tls.NotAfter())
	return nil
}

// logCapacity says what the limits in force let through, so that an
// operator knows the figures before a refusal tells them.
func (d *Daemon) logCapacity(backends []peer.ID) {
	c := node.CapacityOf(d.cfg.Host.Concrete(backends...))
	d.log.Info("limits in force", "peers", c.Peers, "streams_per_peer", c.PeerStreams,
		"forwarded_streams_tcp", c.Streams, "forwarded_streams_quic", c.StreamsQUIC,
		"memory_mib", c.Memory>>20, "see", "docs/spec.md Limits; resource_manager in the configuration")
}

// listen starts the host and the balancer on it, and resolves the
// addresses to print.
func listen(cfg Config, log *slog.Logger, nc node.Config, opts []balancer.Option) (*Daemon, error) {
	h, err := node.New(nc)
	if err != nil {
		return nil, err
	}
	lb, err := balancer.New(h, opts...)
	if err != nil {
		h.Close()
		return nil, err
	}
	addrs, err := node.Addrs(h, nc.Listen)
	if err != nil {
		lb.Close()
		h.Close()
		return nil, err
	}
	return &Daemon{cfg: cfg, log: log, host: h, lb: lb, addrs: addrs}, nil
}

// logStarted says what the daemon serves, and warns when it can route
// nothing.
func (d *Daemon) logStarted(backends int) {
	cfg := d.cfg
	d.log.Info("balancer started", "peer", d.host.ID(), "addrs", len(d.addrs), "backends", backends,
		"ttl_default", cfg.TTLDefault, "ttl_max", cfg.TTLMax)
	for _, a := range cfg.Allow {
		d.log.Info("backend allowed", "peer", a.Peer, "protocols", allowed(a.Protocols))
	}
	if len(cfg.Allow) == 0 {
		d.log.Warn("no backend is allowed to register, so nothing is routed yet",
			"how", "get a backend's peer ID with `balancer id --identity backend.key`, then restart with --allow PEER_ID (or PEER_ID=/proto/1.0.0,/other/*), or list it under allow: in the --config file and send SIGHUP")
	}
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
	p, err := c.plan()
	if err != nil {
		return nil, err
	}
	return p.listen, nil
}

// plan is a checked Config, parsed into what Start needs.
type plan struct {
	listen     []ma.Multiaddr
	backends   []peer.ID
	opts       []balancer.Option // without the tracer and logger
	adminToken string
	tls        *certfile.Pair // nil without tls_cert
	proxies    []netip.Prefix
}

// plan checks the daemon's own settings here and leaves the balancer's to
// the balancer (balancerOptions), so that each check is written once.
func (c *Config) plan() (*plan, error) {
	if len(c.Listen) == 0 {
		return nil, errors.New("listen: no address given")
	}
	p := &plan{listen: make([]ma.Multiaddr, 0, len(c.Listen))}
	for _, s := range c.Listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("listen %q: not a multiaddr: %w", s, err)
		}
		p.listen = append(p.listen, a)
	}
	var err error
	if p.opts, p.backends, err = c.balancerOptions(); err != nil {
		return nil, err
	}
	if c.DrainTimeout < 0 {
		return nil, fmt.Errorf("drain-timeout %v: must not be negative", c.DrainTimeout)
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		return nil, err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return nil, fmt.Errorf("log-format %q: want text or json", c.LogFormat)
	}
	if c.AdminEnabled() {
		if p.adminToken, err = c.AdminToken(); err != nil {
			return nil, err
		}
		if err := admin.CheckBind(c.Admin, c.AdminPublic, p.adminToken); err != nil {
			return nil, fmt.Errorf("admin %s: %w", c.Admin, err)
		}
	}
	if err := c.Host.Check(); err != nil {
		return nil, err
	}
	if c.Identity == "" {
		return nil, errors.New("identity: no key file given")
	}
	if c.ConnsPerIP < 0 {
		return nil, fmt.Errorf("conns-per-ip %d: must not be negative (0 keeps go-libp2p's default, %d)", c.ConnsPerIP, node.DefaultConnsPerIP)
	}
	for _, s := range c.ProxyNetworks {
		pr, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("proxy-network %q: want an IP address or a CIDR prefix such as 10.0.0.5/32", s)
			}
			pr = netip.PrefixFrom(a, a.BitLen())
		}
		p.proxies = append(p.proxies, pr)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return nil, errors.New("tls-cert and tls-key: give both files, or neither")
	}
	if c.TLSCert != "" {
		if p.tls, err = certfile.Load(c.TLSCert, c.TLSKey); err != nil {
			return nil, err
		}
	} else {
		for _, a := range p.listen {
			if node.IsSecureWebSocket(a) {
				return nil, fmt.Errorf("listen %s: a secure WebSocket address needs a certificate: set tls-cert and tls-key (PEM files)", a)
			}
		}
	}
	return p, nil
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

package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/libp2p-balancer/libp2p-balancer/internal/daemon"
	"github.com/libp2p-balancer/libp2p-balancer/internal/logging"
)

var serveCmd = &command{
	name:    "serve",
	summary: "run the load balancer",
	about: `Runs the load balancer: allowed backends register protocols with it, and
it routes every stream a peer opens on one of them to a backend, under its
own peer ID.

On start it prints each address to reach it on, one per line, each a full
multiaddr ending in /p2p/<peer ID>; logs go to standard error. SIGINT or
SIGTERM stops accepting new streams, lets streams in flight finish for up to
--drain-timeout, and exits 0 (a second signal cuts the wait short).

Settings come from --config (YAML; see balancer.example.yaml), then from the
flags given, which override the file; a repeatable flag replaces the file's
whole list. Pools, limits and health are set in the file only.

The admin listener (--admin, default 127.0.0.1:8242) serves Prometheus
metrics on /metrics, JSON on /api/status, /api/routes, /api/backends and
/api/events, /healthz and /readyz, and a status page on /. It binds to
loopback unless --admin-public is given, which then requires a token.`,
	flags: func(fs *flag.FlagSet) func([]string) int {
		def := daemon.DefaultConfig()
		fc := def
		configPath := fs.String("config", "", "YAML `FILE` with any of the settings below")
		fs.StringVar(&fc.Identity, "identity", def.Identity, "private key `PATH` (crypto.MarshalPrivateKey bytes);\ncreated (Ed25519, mode 0600) when missing; instances sharing it share one peer ID")
		listen := newList(def.Listen...)
		fs.Var(listen, "listen", "`MULTIADDR` to listen on (repeatable; port 0 picks a free port)")
		allow := newList()
		fs.Var(allow, "allow", "backend allowed to register: `PEER_ID` (any protocol) or\nPEER_ID=PROTO[,PROTO...], a PROTO ending in * being a prefix (repeatable)")
		fs.DurationVar(&fc.TTLDefault, "ttl-default", def.TTLDefault, "route TTL granted when a backend asks for none")
		fs.DurationVar(&fc.TTLMax, "ttl-max", def.TTLMax, "longest route TTL granted")
		fs.DurationVar(&fc.DrainTimeout, "drain-timeout", def.DrainTimeout, "on SIGINT/SIGTERM, how long streams in flight may take to finish")
		fs.DurationVar(&fc.HandshakeTimeout, "handshake-timeout", def.HandshakeTimeout, "how long a backend may take to accept a forwarded stream")
		fs.DurationVar(&fc.DialTimeout, "dial-timeout", def.DialTimeout, "how long reaching the target of a backend's outbound stream may take")
		fs.DurationVar(&fc.IdleTimeout, "idle-timeout", def.IdleTimeout, "reset a forwarded stream idle for this long (0: never)")
		fs.DurationVar(&fc.ProbeInterval, "probe-interval", def.ProbeInterval, "ping each backend this often; one that does not answer in time is\ndisconnected and its routes suspended (0: off)")
		fs.StringVar(&fc.LogLevel, "log-level", def.LogLevel, "`LEVEL`: debug, info, warn or error")
		fs.StringVar(&fc.LogFormat, "log-format", def.LogFormat, "`FORMAT` of the logs: text or json")
		fs.StringVar(&fc.Admin, "admin", def.Admin, "`HOST:PORT` of the admin listener (metrics, JSON API, status page); off to disable")
		fs.BoolVar(&fc.AdminPublic, "admin-public", def.AdminPublic, "allow a non-loopback --admin address (then a token is required)")
		fs.StringVar(&fc.AdminTokenFile, "admin-token-file", def.AdminTokenFile, "`FILE` holding the admin bearer token (or set BALANCER_ADMIN_TOKEN)")

		return func(args []string) int {
			if len(args) > 0 {
				return fail("serve", fmt.Errorf("unexpected argument %q (flags only)", args[0]))
			}
			cfg := daemon.DefaultConfig()
			if *configPath != "" {
				if err := daemon.LoadFile(*configPath, &cfg); err != nil {
					return fail("serve", err)
				}
			}
			var err error
			fs.Visit(func(f *flag.Flag) {
				switch f.Name {
				case "identity":
					cfg.Identity = fc.Identity
				case "listen":
					cfg.Listen = listen.vals
				case "allow":
					cfg.Allow = nil
					for _, s := range allow.vals {
						a, perr := daemon.ParseAllow(s)
						if perr != nil && err == nil {
							err = perr
						}
						cfg.Allow = append(cfg.Allow, a)
					}
				case "ttl-default":
					cfg.TTLDefault = fc.TTLDefault
				case "ttl-max":
					cfg.TTLMax = fc.TTLMax
				case "drain-timeout":
					cfg.DrainTimeout = fc.DrainTimeout
				case "handshake-timeout":
					cfg.HandshakeTimeout = fc.HandshakeTimeout
				case "dial-timeout":
					cfg.DialTimeout = fc.DialTimeout
				case "idle-timeout":
					cfg.IdleTimeout = fc.IdleTimeout
				case "probe-interval":
					cfg.ProbeInterval = fc.ProbeInterval
				case "log-level":
					cfg.LogLevel = fc.LogLevel
				case "log-format":
					cfg.LogFormat = fc.LogFormat
				case "admin":
					cfg.Admin = fc.Admin
				case "admin-public":
					cfg.AdminPublic = fc.AdminPublic
				case "admin-token-file":
					cfg.AdminTokenFile = fc.AdminTokenFile
				}
			})
			if err != nil {
				return fail("serve", err)
			}
			return serve(cfg)
		}
	},
}

func serve(cfg daemon.Config) int {
	if _, err := cfg.Check(); err != nil {
		return fail("serve", err)
	}
	log, err := logging.New(cfg.LogFormat, cfg.LogLevel, os.Stderr)
	if err != nil {
		return fail("serve", err)
	}
	// Signals are caught before the addresses are printed: whoever reads
	// them may signal at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	d, err := daemon.Start(cfg, log)
	if err != nil {
		return fail("serve", err)
	}
	for _, a := range d.Addrs() {
		fmt.Println(a)
	}
	sig := <-sigs
	log.Info("signal received; draining", "signal", sig, "drain_timeout", cfg.DrainTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer cancel()
	go func() {
		select {
		case sig := <-sigs:
			log.Warn("second signal; cutting the drain short", "signal", sig)
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := d.Shutdown(ctx); err != nil {
		log.Warn("stopped with streams cut", "err", err)
	}
	log.Info("stopped")
	return 0
}

package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
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

Browsers reach the balancer on /ws, /tls/ws (which needs --tls-cert and
--tls-key), /quic-v1/webtransport and /webrtc-direct addresses; see
docs/deploy.md.

SIGHUP, or POST /api/reload on the admin listener, reads the --tls-cert and
--tls-key files again (for a renewed certificate) and --config again (with
the flags given still overriding it), and applies at once the allow
list, pools, limits, health, TTLs, timeouts, probe interval, outbound policy,
drain timeout and log level, without cutting a stream. A backend no longer
allowed loses its routes; its streams in flight finish. An invalid file
changes nothing, and the log names the culprit in one line. Settings that
cannot change live (identity, listen and admin addresses, certificate file
names, host and connection limits, log format) are logged as needing a
restart and keep their values.

Settings come from --config (YAML; see balancer.example.yaml), then from the
flags given, which override the file; a repeatable flag replaces the file's
whole list. Pools, limits, health and the outbound dial rate are set in the
file only.

The admin listener (--admin, default 127.0.0.1:8242) serves Prometheus
metrics on /metrics, JSON on /api/status, /api/routes, /api/backends and
/api/events, /healthz and /readyz, and a status page on /. It binds to
loopback unless --admin-public is given, which then requires a token.`,
	flags: func(fs *flag.FlagSet) func([]string) int {
		configPath := fs.String("config", "", "YAML `FILE` with any of the settings below")
		fc := daemon.DefaultConfig() // shows the defaults in --help
		serveFlags(fs, &fc)
		return func(args []string) int {
			if len(args) > 0 {
				return fail("serve", fmt.Errorf("unexpected argument %q (flags only)", args[0]))
			}
			src := daemon.Source{File: *configPath, Load: func() (daemon.Config, string, error) {
				return loadServeConfig(*configPath, fs)
			}}
			cfg, sum, err := src.Load()
			if err != nil {
				return fail("serve", err)
			}
			return serve(cfg, src, sum)
		}
	},
}

// serveFlags declares serve's flags on fs, each bound to its field of c and
// taking c's value as its default. It is the one list of the flags: serve
// declares them again on a second set only to apply the flags given over a
// configuration file.
func serveFlags(fs *flag.FlagSet, c *daemon.Config) *allowFlag {
	fs.StringVar(&c.Identity, "identity", c.Identity, "private key `PATH` (crypto.MarshalPrivateKey bytes);\ncreated (Ed25519, mode 0600) when missing; instances sharing it share one peer ID")
	fs.Var(newList(&c.Listen), "listen", "`MULTIADDR` to listen on (repeatable; port 0 picks a free port)")
	allow := &allowFlag{dst: &c.Allow}
	fs.Var(allow, "allow", "backend allowed to register: `PEER_ID` (any protocol) or\nPEER_ID=PROTO[,PROTO...], a PROTO ending in * being a prefix (repeatable)")
	fs.DurationVar(&c.TTLDefault, "ttl-default", c.TTLDefault, "route TTL granted when a backend asks for none")
	fs.DurationVar(&c.TTLMax, "ttl-max", c.TTLMax, "longest route TTL granted")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "on SIGINT/SIGTERM, how long streams in flight may take to finish")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", c.HandshakeTimeout, "how long a backend may take to accept a forwarded stream")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", c.DialTimeout, "how long reaching the target of a backend's outbound stream may take")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "reset a forwarded stream idle for this long (0: never)")
	fs.DurationVar(&c.ProbeInterval, "probe-interval", c.ProbeInterval, "ping each backend this often; one that does not answer in time is\ndisconnected and its routes suspended (0: off)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "`LEVEL`: debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "`FORMAT` of the logs: text or json")
	fs.StringVar(&c.Admin, "admin", c.Admin, "`HOST:PORT` of the admin listener (metrics, JSON API, status page); off to disable")
	fs.BoolVar(&c.AdminPublic, "admin-public", c.AdminPublic, "allow a non-loopback --admin address (then a token is required)")
	fs.StringVar(&c.AdminTokenFile, "admin-token-file", c.AdminTokenFile, "`FILE` holding the admin bearer token (or set BALANCER_ADMIN_TOKEN)")
	fs.BoolVar(&c.Outbound.Loopback, "dial-loopback", c.Outbound.Loopback, "let backends' outbound streams reach peers on loopback addresses\n(off: public addresses only; link-local and metadata never)")
	fs.BoolVar(&c.Outbound.Private, "dial-private", c.Outbound.Private, "let backends' outbound streams reach peers on private addresses\n(10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7)")
	fs.BoolVar(&c.Outbound.BackendToBackend, "backend-to-backend", c.Outbound.BackendToBackend, "let a backend open outbound streams to another allowed backend")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "PEM `FILE` of the certificate chain (leaf first) that /tls/ws listeners serve;\nSIGHUP reads it again")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "PEM `FILE` of the private key of --tls-cert")
	fs.IntVar(&c.ConnsPerIP, "conns-per-ip", c.ConnsPerIP, "connections one IPv4 address (IPv6 /56) may hold open at once")
	fs.Var(newList(&c.ProxyNetworks), "proxy-network", "`CIDR` or IP of a reverse proxy in front of the balancer, exempt from\nthe per-IP connection limits (repeatable)")
	return allow
}

// serveConfig is the defaults, then the file at path (if any), then the
// flags given on parsed.
func serveConfig(path string, parsed *flag.FlagSet) (daemon.Config, error) {
	cfg, _, err := loadServeConfig(path, parsed)
	return cfg, err
}

// loadServeConfig is serveConfig, and also returns the hash of the file. A
// reload calls it again, so that the flags keep overriding the file.
func loadServeConfig(path string, parsed *flag.FlagSet) (daemon.Config, string, error) {
	cfg := daemon.DefaultConfig()
	var sum string
	if path != "" {
		var err error
		if sum, err = daemon.LoadFileSum(path, &cfg); err != nil {
			return cfg, "", err
		}
	}
	over := flag.NewFlagSet("serve", flag.ContinueOnError)
	allow := serveFlags(over, &cfg)
	var err error
	parsed.Visit(func(f *flag.Flag) {
		if over.Lookup(f.Name) == nil { // --config
			return
		}
		vals := []string{f.Value.String()}
		if r, ok := f.Value.(interface{ values() []string }); ok {
			vals = r.values() // each use of a repeatable flag
		}
		for _, v := range vals {
			if err == nil {
				err = over.Set(f.Name, v)
			}
		}
	})
	if err == nil {
		err = allow.err
	}
	return cfg, sum, err
}

// allowFlag is --allow, a repeatable flag bound to a list of Allow whose
// first use replaces the list. A value that does not parse is kept in err,
// for serve to report as a configuration error rather than a flag error.
type allowFlag struct {
	dst   *[]daemon.Allow
	given []string
	err   error
}

func (f *allowFlag) String() string {
	if f == nil || f.dst == nil {
		return ""
	}
	var s []string
	for _, a := range *f.dst {
		s = append(s, a.String())
	}
	return strings.Join(s, " ")
}

func (f *allowFlag) Set(s string) error {
	if f.given == nil {
		*f.dst = nil
	}
	f.given = append(f.given, s)
	a, err := daemon.ParseAllow(s)
	if err != nil {
		if f.err == nil {
			f.err = err
		}
		return nil
	}
	*f.dst = append(*f.dst, a)
	return nil
}

func (f *allowFlag) values() []string { return f.given }

func serve(cfg daemon.Config, src daemon.Source, sum string) int {
	if _, err := cfg.Check(); err != nil {
		return fail("serve", err)
	}
	log, level, err := logging.NewVar(cfg.LogFormat, cfg.LogLevel, os.Stderr)
	if err != nil {
		return fail("serve", err)
	}
	src.Level = level
	// Signals are caught before the addresses are printed: whoever reads
	// them may signal at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	defer signal.Stop(hups)

	d, err := daemon.Start(cfg, log)
	if err != nil {
		return fail("serve", err)
	}
	d.SetSource(src, sum)
	for _, a := range d.Addrs() {
		fmt.Println(a)
	}
	var sig os.Signal
	for sig == nil {
		select {
		case <-hups:
			// Reload logs what it did, or why it refused the file.
			_, _ = d.Reload()
		case sig = <-sigs:
		}
	}
	drain := d.Config().DrainTimeout // a reload may have changed it
	log.Info("signal received; draining", "signal", sig, "drain_timeout", drain)
	ctx, cancel := context.WithTimeout(context.Background(), drain)
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

package balancer

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Option configures a Balancer.
type Option func(*config) error

type config struct {
	acl              acl
	ttlDefault       time.Duration
	ttlMax           time.Duration
	handshakeTimeout time.Duration
	dialTimeout      time.Duration
	idleTimeout      time.Duration
	limits           Limits
	health           Health
	policies         []policyRule
	tracer           Tracer
	probeInterval    time.Duration
	log              *slog.Logger
}

func defaultConfig() config {
	return config{
		acl:              acl{},
		ttlDefault:       time.Minute,
		ttlMax:           10 * time.Minute,
		handshakeTimeout: 5 * time.Second,
		dialTimeout:      15 * time.Second,
		limits:           DefaultLimits(),
		health:           DefaultHealth(),
		tracer:           nopTracer{},
		probeInterval:    5 * time.Second,
		log:              slog.Default(),
	}
}

// WithAllow lets backend register routes and open outbound streams. With no
// patterns it may use any protocol; otherwise only protocols that equal a
// pattern or, for a pattern ending in "*", start with what precedes the "*".
// A balancer with no WithAllow lets nobody register.
func WithAllow(backend peer.ID, patterns ...string) Option {
	return func(c *config) error {
		return c.acl.allow(backend, patterns)
	}
}

// WithTTL sets the TTL granted when a request asks for 0 (default one
// minute) and the largest TTL granted (default ten minutes).
func WithTTL(def, max time.Duration) Option {
	return func(c *config) error {
		if def < time.Second || max < def {
			return fmt.Errorf("balancer: TTL default %v must be at least 1s and at most the maximum %v", def, max)
		}
		if max > time.Duration(1<<32-1)*time.Second {
			return fmt.Errorf("balancer: TTL maximum %v does not fit the wire's uint32 seconds", max)
		}
		c.ttlDefault, c.ttlMax = def, max
		return nil
	}
}

// WithHandshakeTimeout bounds each forward handshake: reading a request from
// a backend, and a backend's answer to an inbound stream, after which the
// stream goes to the next backend of the pool. Default 5 s.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("balancer: handshake timeout must be positive")
		}
		c.handshakeTimeout = d
		return nil
	}
}

// WithDialTimeout bounds connecting to the target of an outbound stream and
// negotiating its protocol. Default 15 s.
func WithDialTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("balancer: dial timeout must be positive")
		}
		c.dialTimeout = d
		return nil
	}
}

// WithIdleTimeout resets a forwarded stream on which no byte moved either way
// for d. Default 0: no idle timeout, as for a direct libp2p stream.
func WithIdleTimeout(d time.Duration) Option {
	return func(c *config) error {
		c.idleTimeout = d
		return nil
	}
}

// WithLimits replaces the default Limits.
func WithLimits(l Limits) Option {
	return func(c *config) error {
		c.limits = l
		return nil
	}
}

// WithLogger sets the structured logger; default slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		c.log = l
		return nil
	}
}

// WithHealth replaces the default passive health checking; see Health.
func WithHealth(h Health) Option {
	return func(c *config) error {
		if h.ConsecutiveFailures > 0 && (h.BaseEjection <= 0 || h.MaxEjection < h.BaseEjection) {
			return fmt.Errorf("balancer: health: ejection times %v..%v are not increasing", h.BaseEjection, h.MaxEjection)
		}
		c.health = h
		return nil
	}
}

// WithPolicy sets the policy of the pools of protocols matching pattern: a
// protocol ID, or a prefix followed by "*". The first matching WithPolicy
// wins; protocols no pattern matches use least-streams, not sticky.
func WithPolicy(pattern string, p Policy) Option {
	return func(c *config) error {
		if _, ok := strategyNames[p.Strategy]; !ok {
			return fmt.Errorf("balancer: policy for %q: unknown strategy %v", pattern, p.Strategy)
		}
		c.policies = append(c.policies, policyRule{pattern: pattern, policy: p})
		return nil
	}
}

// CheckOptions reports the first invalid option, without starting anything,
// so that a daemon can refuse a bad configuration before it touches its
// identity file or the network.
func CheckOptions(opts ...Option) error {
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return err
		}
	}
	return nil
}

// WithProbeInterval sets how often the balancer pings each connected
// backend that has routes (go-libp2p's ping protocol, on the backend's own
// host); default 5 s, 0 to turn probing off. A backend that does not answer
// within the interval is disconnected, which suspends its routes at once:
// without it a cut link is noticed only by go-libp2p's keepalives, after 30
// to 45 s. Any answer counts, "protocol not supported" included, so a
// backend host without ping is never disconnected for it.
func WithProbeInterval(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("balancer: probe interval %v: must not be negative", d)
		}
		c.probeInterval = d
		return nil
	}
}

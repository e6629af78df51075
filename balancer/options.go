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
	// dial is the outbound dial policy, nil for DefaultDialPolicy; see
	// dialpolicy.go, which also holds its options.
	dial             *DialPolicy
	backendToBackend bool
	// naiveCopy carries streams with internal/naive's io.Copy instead of
	// package pipe: a benchmarking switch, set only by the bench harness
	// through naive.BalancerOption (see balancer/naive.go).
	naiveCopy bool
}

// Defaults of the options. They, DefaultLimits and DefaultHealth are the
// only place these values are written: balancer serve's flags and
// configuration file take theirs from here.
const (
	// DefaultTTL is granted to a registration that asks for none (WithTTL).
	DefaultTTL = time.Minute
	// DefaultMaxTTL is the longest TTL granted (WithTTL).
	DefaultMaxTTL = 10 * time.Minute
	// DefaultHandshakeTimeout bounds a forward handshake
	// (WithHandshakeTimeout).
	DefaultHandshakeTimeout = 5 * time.Second
	// DefaultDialTimeout bounds reaching an outbound stream's target
	// (WithDialTimeout).
	DefaultDialTimeout = 15 * time.Second
	// DefaultProbeInterval is how often each backend is pinged
	// (WithProbeInterval).
	DefaultProbeInterval = 5 * time.Second
)

func defaultConfig() config {
	return config{
		acl:              acl{},
		ttlDefault:       DefaultTTL,
		ttlMax:           DefaultMaxTTL,
		handshakeTimeout: DefaultHandshakeTimeout,
		dialTimeout:      DefaultDialTimeout,
		limits:           DefaultLimits(),
		health:           DefaultHealth(),
		tracer:           nopTracer{},
		probeInterval:    DefaultProbeInterval,
		log:              slog.Default(),
	}
}

// OptionError is an option that New and CheckOptions refuse: the setting at
// fault, its value, and why. A program with its own names for the settings
// (balancer serve's flags and configuration keys) maps Setting to its name
// instead of checking the value a second time.
type OptionError struct {
	// Setting is one of "TTL default", "TTL maximum", "handshake timeout",
	// "dial timeout", "idle timeout", "probe interval", "health
	// ejection times", "dials per second per backend" and "new streams per
	// second per peer".
	Setting string
	// Value is the value refused.
	Value any
	// Reason says what the value must be.
	Reason string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("balancer: %s %v: %s", e.Setting, e.Value, e.Reason)
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

// WithTTL sets the TTL granted when a request asks for 0 (DefaultTTL, one
// minute) and the largest TTL granted (DefaultMaxTTL, ten minutes).
func WithTTL(def, max time.Duration) Option {
	return func(c *config) error {
		switch {
		case def < time.Second:
			return &OptionError{"TTL default", def, "must be at least 1s"}
		case max < def:
			return &OptionError{"TTL maximum", max, fmt.Sprintf("must be at least the TTL default (%v)", def)}
		case max > time.Duration(1<<32-1)*time.Second:
			return &OptionError{"TTL maximum", max, "longer than the wire's uint32 seconds"}
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
			return &OptionError{"handshake timeout", d, "must be positive"}
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
			return &OptionError{"dial timeout", d, "must be positive"}
		}
		c.dialTimeout = d
		return nil
	}
}

// WithIdleTimeout resets a forwarded stream on which no byte moved either way
// for d. Default 0: no idle timeout, as for a direct libp2p stream.
func WithIdleTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return &OptionError{"idle timeout", d, "must not be negative"}
		}
		c.idleTimeout = d
		return nil
	}
}

// WithLimits replaces the default Limits. It refuses a
// NewStreamsPerSecondPerPeer that is not 0 or at least 1.
func WithLimits(l Limits) Option {
	return func(c *config) error {
		if err := l.check(); err != nil {
			return err
		}
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
			return &OptionError{"health ejection times", fmt.Sprintf("%v..%v", h.BaseEjection, h.MaxEjection), "must be increasing"}
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
// identity file or the network. A refused value is an *OptionError.
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
			return &OptionError{"probe interval", d, "must not be negative"}
		}
		c.probeInterval = d
		return nil
	}
}

package backend

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// Option configures a Backend.
type Option func(*config) error

type config struct {
	ttl              time.Duration
	handshakeTimeout time.Duration
	backoffMin       time.Duration
	backoffMax       time.Duration
	lanes            bool
	maxLanes         int
	laneIdle         time.Duration
	weight           uint32
	keepalive        time.Duration
	log              *slog.Logger
}

func defaultConfig() config {
	return config{
		ttl:              0, // the balancer's default
		handshakeTimeout: 5 * time.Second,
		backoffMin:       100 * time.Millisecond,
		backoffMax:       30 * time.Second,
		lanes:            true,
		maxLanes:         DefaultMaxLanes,
		laneIdle:         DefaultLaneIdleTimeout,
		keepalive:        5 * time.Second,
		log:              slog.Default(),
	}
}

// WithTTL asks the balancers for this route lifetime, in whole seconds;
// default 0 asks for each balancer's default. The balancer may grant less;
// the backend extends at half of what was granted.
func WithTTL(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 || (d > 0 && d < time.Second) {
			return fmt.Errorf("backend: TTL %v: must be 0 or at least 1s", d)
		}
		c.ttl = d
		return nil
	}
}

// WithHandshakeTimeout bounds each exchange with a balancer: a registration
// request and its response, an inbound forward handshake, and the wait for
// an outbound stream's answer when the caller's context has no deadline.
// Default 5 s.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("backend: handshake timeout must be positive")
		}
		c.handshakeTimeout = d
		return nil
	}
}

// WithBackoff sets the bounds of the exponential back-off between failed
// attempts to reach or register with a balancer. Default 100 ms to 30 s;
// the keepalive interval (WithKeepalive) caps it too, so that a restarted
// balancer is found within that interval. Nothing shortens a back-off: a
// connection event or a new handler meanwhile waits for its end.
func WithBackoff(min, max time.Duration) Option {
	return func(c *config) error {
		if min <= 0 || max < min {
			return fmt.Errorf("backend: back-off bounds %v..%v are not increasing", min, max)
		}
		c.backoffMin, c.backoffMax = min, max
		return nil
	}
}

// WithLanes turns extra QUIC connections to a balancer on (the default) or
// off. Over QUIC, go-libp2p allows 256 concurrent streams per connection and
// direction; lanes are what lets a backend carry more forwarded streams than
// that. See docs/spec.md, "Stream capacity".
func WithLanes(on bool) Option {
	return func(c *config) error {
		c.lanes = on
		return nil
	}
}

// WithLaneLimits bounds the lanes to each balancer: at most max of them
// (default DefaultMaxLanes, 80: with the host's own connection, 20,736
// concurrent streams per direction), each closed once it has carried no
// stream for idle (default DefaultLaneIdleTimeout, a minute; 0 keeps idle
// lanes). A lane whose connection closed is closed at once whatever these
// say. max 0 means no lanes, as WithLanes(false).
func WithLaneLimits(max int, idle time.Duration) Option {
	return func(c *config) error {
		if max < 0 || idle < 0 {
			return fmt.Errorf("backend: lane limits %d, %v: must not be negative", max, idle)
		}
		c.maxLanes, c.laneIdle = max, idle
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

// WithWeight states this backend's weight in every registration: its share
// of new streams, relative to the other backends of a pool, where the pool
// uses the weighted strategy. Default 0, which the balancer takes as 1; at
// most wire.MaxWeight (256), which balancers enforce.
func WithWeight(w uint32) Option {
	return func(c *config) error {
		if w > wire.MaxWeight {
			return fmt.Errorf("backend: weight %d: at most %d", w, wire.MaxWeight)
		}
		c.weight = w
		return nil
	}
}

// WithKeepalive sets how often, at the least, the backend sends its
// registration to each balancer even when the TTL would allow waiting
// longer; default 5 s, 0 to extend only at half the TTL. Besides extending
// the routes, it is the backend's liveness check of the link: after two
// exchanges in a row with no answer at all (any answer, even a refusal or
// DRAINING, resets the count), the backend drops its
// connections to that balancer and dials anew, which finds a cut link or a
// balancer restarted without a word within seconds rather than after
// go-libp2p's 30–45 s keepalive timeouts.
func WithKeepalive(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("backend: keepalive %v: must not be negative", d)
		}
		c.keepalive = d
		return nil
	}
}

// CheckOptions reports the first invalid option, without starting anything,
// so that a command can refuse a bad setting before it touches its identity
// file or the network.
func CheckOptions(opts ...Option) error {
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return err
		}
	}
	return nil
}

package balancer

import (
	"errors"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/link"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// Health configures passive health checking, modelled on Envoy's outlier
// detection: a backend that fails ConsecutiveFailures forward handshakes in
// a row (no answer within the handshake timeout, a reset, a broken answer,
// or the stream could not be opened) is ejected from all its pools for
// BaseEjection times the number of times it was ejected, at most
// MaxEjection. An ejected backend is offered a stream only when every
// healthy backend of the pool failed it ("panic routing", so that a pool
// whose backends all look unhealthy still serves). The first success after
// an ejection lowers the multiplier by one.
//
// A refusal (the backend answered with a status, such as REJECTED) is
// neither a failure nor a success: the backend is alive and chose to turn
// down that stream, perhaps for that remote peer, so counting refusals
// would let one unwelcome remote peer eject a healthy backend from every
// pool with five streams, and counting them as successes would let it hide
// a failing backend's failures (issue 11, item 8).
//
// The yaml tags are the keys of balancer serve's configuration file
// (health: in balancer.example.yaml).
type Health struct {
	// ConsecutiveFailures before an ejection. Default 5; 0 turns ejection
	// off.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// BaseEjection is the first ejection's length. Default 10 s.
	BaseEjection time.Duration `yaml:"base_ejection"`
	// MaxEjection caps an ejection's length. Default 5 min.
	MaxEjection time.Duration `yaml:"max_ejection"`
}

// DefaultHealth returns the Health a Balancer has unless WithHealth says
// otherwise.
func DefaultHealth() Health {
	return Health{ConsecutiveFailures: 5, BaseEjection: 10 * time.Second, MaxEjection: 5 * time.Minute}
}

// healthState is one backend's passive health. Guarded by Balancer.mu.
type healthState struct {
	failures     int
	ejections    int
	ejectedUntil time.Time
}

func (h *healthState) ejected(now time.Time) bool { return now.Before(h.ejectedUntil) }

// outcome is how a backend answered an offer, for passive health.
type outcome int

const (
	accepted outcome = iota
	refused          // a status answer: alive, declined; not counted
	failed           // timeout, reset, error, no stream: counted
)

// outcomeOf classifies offer's error.
func outcomeOf(err error) outcome {
	var se *wire.StatusError
	switch {
	case err == nil:
		return accepted
	case errors.Is(err, link.ErrFull):
		// A backend at its link's capacity is busy, not sick.
		return refused
	case errors.As(err, &se):
		return refused
	default:
		return failed
	}
}

// recordOutcome updates be's health after a forward handshake. Returns true
// when this failure ejected the backend.
func (b *Balancer) recordOutcome(be *backendState, o outcome) (ejected bool, until time.Duration) {
	if o == refused {
		return false, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	h := &be.health
	if o == accepted {
		if h.failures > 0 || h.ejections > 0 {
			h.failures = 0
			if !h.ejected(time.Now()) && h.ejections > 0 {
				h.ejections--
			}
		}
		return false, 0
	}
	cfg := b.settings().health
	if h.ejected(time.Now()) {
		// Offers made before the ejection that fail now: the same trouble
		// that ejected it (a hang or a dropped link fails every offer in
		// flight at once). Counted, a dropped link with a few hundred
		// offers in flight ejected the backend again and again, for the
		// maximum within a second.
		return false, 0
	}
	h.failures++
	if cfg.ConsecutiveFailures <= 0 || h.failures < cfg.ConsecutiveFailures {
		return false, 0
	}
	h.failures = 0
	h.ejections++
	d := min(cfg.BaseEjection*time.Duration(h.ejections), cfg.MaxEjection)
	h.ejectedUntil = time.Now().Add(d)
	return true, d
}

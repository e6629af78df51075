package balancer

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Limits bound the work one backend, one remote peer or the whole balancer
// can cause. A zero field means no limit of that kind (the host's resource
// manager still applies). Each limit refuses with its own reason: a backend
// gets RESOURCE_LIMIT_EXCEEDED with a text naming the limit, a remote peer's
// stream is reset with go-libp2p's "resource limit exceeded" stream error
// code (0x1003 "rate limited" for the rate), and the balancer logs the
// refusal naming the limit (a line per kind per interval under a flood).
//
// The yaml tags are the keys of balancer serve's configuration file
// (limits: in balancer.example.yaml), so that the file and the library
// share one list of fields and one DefaultLimits.
type Limits struct {
	// ProtocolsPerRequest caps the protocols (added plus released) in one
	// RoutingRequest, and the protocols of one outbound request.
	// Default 1024.
	ProtocolsPerRequest int `yaml:"protocols_per_request"`
	// RoutesPerBackend caps the protocols routed to one backend.
	// Default 4096.
	RoutesPerBackend int `yaml:"routes_per_backend"`
	// Streams caps the forwarded streams in flight, both directions, on the
	// whole balancer. Default 0.
	Streams int `yaml:"streams"`
	// StreamsPerBackend caps the forwarded streams in flight to and from
	// one backend; a backend at its cap is passed over for new inbound
	// streams. Default 0.
	StreamsPerBackend int `yaml:"streams_per_backend"`
	// OutboundPerBackend caps the outbound streams in flight of one
	// backend. Default 0.
	OutboundPerBackend int `yaml:"outbound_per_backend"`
	// StreamsPerPeer caps the inbound streams in flight from one remote
	// peer. Default 0.
	StreamsPerPeer int `yaml:"streams_per_peer"`
	// NewStreamsPerSecondPerPeer caps the rate of new inbound streams from
	// one remote peer (a token bucket with a burst of one second's worth):
	// 0 for none, else at least 1, since a bucket that holds less than one
	// token would refuse every stream. Default 0.
	NewStreamsPerSecondPerPeer float64 `yaml:"new_streams_per_second_per_peer"`
}

// DefaultLimits returns the limits a Balancer has unless WithLimits says
// otherwise.
func DefaultLimits() Limits {
	return Limits{ProtocolsPerRequest: 1024, RoutesPerBackend: 4096}
}

// check refuses a limit that could only be a mistake. A rate below one new
// stream per second would refuse every stream forever, since the bucket
// holds one second's worth and a stream needs a whole token (issue 11).
func (l Limits) check() error {
	if r := l.NewStreamsPerSecondPerPeer; r != 0 && (!(r >= 1) || math.IsInf(r, 1)) {
		return &OptionError{"new streams per second per peer", r, "must be 0 (no limit) or a finite rate of at least 1"}
	}
	return nil
}

// admission counts streams against the balancer-wide and per-remote-peer
// limits.
type admission struct {
	mu     sync.Mutex
	limits Limits
	total  int
	peers  map[peer.ID]*peerUse
}

// peerUse is one remote peer's share: its inbound streams in flight and its
// token bucket.
type peerUse struct {
	active int
	tokens float64
	last   time.Time
}

// refusal is a limit refusing a remote peer's stream: the stream error code
// its reset carries, the reason, and which limit in words.
type refusal struct {
	code   network.StreamErrorCode
	reason Reason // ReasonLimit or ReasonRate
	msg    string
}

func (r *refusal) Error() string { return r.msg }

func limited(format string, args ...any) *refusal {
	return &refusal{network.StreamResourceLimitExceeded, ReasonLimit, fmt.Sprintf(format, args...)}
}

// admitInbound takes a slot for a new inbound stream from remote, or says
// which limit refuses it.
func (a *admission) admitInbound(remote peer.ID) *refusal {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.limits
	if l.Streams > 0 && a.total >= l.Streams {
		return limited("balancer-wide limit of %d streams reached", l.Streams)
	}
	u := a.peers[remote]
	if u == nil {
		u = &peerUse{tokens: l.NewStreamsPerSecondPerPeer, last: time.Now()}
		a.peers[remote] = u
	}
	if l.StreamsPerPeer > 0 && u.active >= l.StreamsPerPeer {
		return limited("per-peer limit of %d streams reached", l.StreamsPerPeer)
	}
	if rate := l.NewStreamsPerSecondPerPeer; rate > 0 {
		now := time.Now()
		u.tokens = min(rate, u.tokens+rate*now.Sub(u.last).Seconds())
		u.last = now
		if u.tokens < 1 {
			return &refusal{network.StreamRateLimited, ReasonRate, fmt.Sprintf("per-peer rate of %g new streams per second exceeded", rate)}
		}
		u.tokens--
	}
	u.active++
	a.total++
	return nil
}

// setLimits replaces the limits; streams already admitted keep their
// slots, and the next admission is judged by the new limits.
func (a *admission) setLimits(l Limits) {
	a.mu.Lock()
	a.limits = l
	a.mu.Unlock()
}

func (a *admission) releaseInbound(remote peer.ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.total--
	if u := a.peers[remote]; u != nil {
		u.active--
		a.forget(remote, u, time.Now())
	}
}

// admitOutbound takes a balancer-wide slot for an outbound stream.
func (a *admission) admitOutbound() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.limits.Streams > 0 && a.total >= a.limits.Streams {
		return fmt.Errorf("balancer-wide limit of %d streams reached", a.limits.Streams)
	}
	a.total++
	return nil
}

func (a *admission) releaseOutbound() {
	a.mu.Lock()
	a.total--
	a.mu.Unlock()
}

// forget drops a remote peer's entry once it has nothing in flight and a
// full bucket, so that the map holds only peers that are active now.
// Called with a.mu held.
func (a *admission) forget(p peer.ID, u *peerUse, now time.Time) {
	rate := a.limits.NewStreamsPerSecondPerPeer
	if u.active == 0 && (rate <= 0 || u.tokens+rate*now.Sub(u.last).Seconds() >= rate) {
		delete(a.peers, p)
	}
}

// sweep forgets idle peers whose bucket has refilled since their last
// stream ended.
func (a *admission) sweep() {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	for p, u := range a.peers {
		a.forget(p, u, now)
	}
}

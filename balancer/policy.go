package balancer

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Strategy is how a pool picks the backend for a new stream. The backends
// not picked stay in line behind it, for failover.
type Strategy int

const (
	// LeastStreams picks the backend with the fewest forwarded streams in
	// flight (across all its protocols), rotating ties. The default.
	LeastStreams Strategy = iota
	// RoundRobin takes the pool's backends in turn.
	RoundRobin
	// RandomOfTwo picks two backends at random and takes the less busy:
	// nearly as even as LeastStreams, with no herd on one idle backend when
	// many balancers share a pool.
	RandomOfTwo
	// Weighted spreads streams in proportion to the weights backends stated
	// when they registered (RoutingRequest.weight), by smooth weighted
	// round robin.
	Weighted
)

var strategyNames = map[Strategy]string{
	LeastStreams: "least-streams",
	RoundRobin:   "round-robin",
	RandomOfTwo:  "random-of-two",
	Weighted:     "weighted",
}

func (s Strategy) String() string {
	if n, ok := strategyNames[s]; ok {
		return n
	}
	return fmt.Sprintf("Strategy(%d)", int(s))
}

// ParseStrategy parses a strategy's name as String prints it.
func ParseStrategy(name string) (Strategy, error) {
	for s, n := range strategyNames {
		if n == name {
			return s, nil
		}
	}
	return 0, fmt.Errorf("unknown strategy %q (want least-streams, round-robin, random-of-two or weighted)", name)
}

// Policy is how the pools of some protocols choose backends.
type Policy struct {
	Strategy Strategy
	// Sticky sends the streams of one remote peer to the same backend while
	// it stays healthy, for stateful protocols. It ranks backends by
	// rendezvous hashing of (remote peer, backend), so a backend that leaves
	// moves only its own remote peers, and the order behind the first
	// choice is stable too.
	Sticky bool
}

// policyRule applies a Policy to protocols matching a pattern.
type policyRule struct {
	pattern string
	policy  Policy
}

// policyFor returns the policy of the first rule matching proto, or the
// default policy.
func (c *config) policyFor(proto protocol.ID) Policy {
	for _, r := range c.policies {
		if r.pattern == string(proto) || (strings.HasSuffix(r.pattern, "*") && strings.HasPrefix(string(proto), strings.TrimSuffix(r.pattern, "*"))) {
			return r.policy
		}
	}
	return Policy{}
}

// member is one backend of a pool, as seen while choosing.
type member struct {
	r      *route
	active int64
}

// order sorts the pool's candidates for one stream from remote: first
// choice first. Called with b.mu held (it updates the pool's rotation and
// weights).
func (pl *pool) order(policy Policy, ms []member, remote peer.ID) {
	if len(ms) < 2 {
		return
	}
	if policy.Sticky {
		scores := make(map[*route]uint64, len(ms))
		for _, m := range ms {
			// SHA-256, not a per-process seeded hash, so that several
			// balancer instances sharing a pool agree on the choice.
			h := sha256.New()
			h.Write([]byte(remote))
			h.Write([]byte(m.r.backend.id))
			scores[m.r] = binary.BigEndian.Uint64(h.Sum(nil))
		}
		sort.Slice(ms, func(i, j int) bool { return scores[ms[i].r] > scores[ms[j].r] })
		return
	}
	switch policy.Strategy {
	case RoundRobin:
		rotate(ms, int(pl.next%uint64(len(ms))))
		pl.next++
	case RandomOfTwo:
		rand.Shuffle(len(ms), func(i, j int) { ms[i], ms[j] = ms[j], ms[i] })
		if ms[1].active < ms[0].active {
			ms[0], ms[1] = ms[1], ms[0]
		}
	case Weighted:
		// Smooth weighted round robin (as in nginx): every member gains its
		// weight, the richest is picked and pays the total. Over any window
		// each member is picked in proportion to its weight, interleaved.
		var total int64
		best := 0
		for i, m := range ms {
			w := int64(m.r.weight)
			total += w
			m.r.current += w
			if m.r.current > ms[best].r.current {
				best = i
			}
		}
		ms[best].r.current -= total
		ms[0], ms[best] = ms[best], ms[0]
		rest := ms[1:]
		sort.SliceStable(rest, func(i, j int) bool { return rest[i].active < rest[j].active })
	default: // LeastStreams
		rotate(ms, int(pl.next%uint64(len(ms))))
		pl.next++
		sort.SliceStable(ms, func(i, j int) bool { return ms[i].active < ms[j].active })
	}
}

// rotate moves ms[k:] to the front.
func rotate(ms []member, k int) {
	if k == 0 {
		return
	}
	tmp := append([]member(nil), ms[:k]...)
	copy(ms, ms[k:])
	copy(ms[len(ms)-k:], tmp)
}

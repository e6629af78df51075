package balancer

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// DialPolicy says which addresses the balancer's host may dial to reach the
// target of a backend's outbound stream, and how often one backend may make
// it dial. Without it a backend could make the balancer connect to anything
// the balancer can reach (its loopback services, the private network it
// sits in, a cloud metadata endpoint) and read from the DIAL_FAILED text
// which ports are open, under the balancer's identity (issue 11, item 2).
//
// Never dialled, whatever the policy: link-local addresses (169.254.0.0/16,
// fe80::/10, which hold the AWS, GCP and Azure metadata endpoint
// 169.254.169.254), the other known metadata endpoints (100.100.100.200,
// fd00:ec2::254), unspecified, multicast, broadcast and reserved addresses,
// and addresses with no IP at all once resolved. IPv4 addresses embedded in
// IPv6 (::ffff:0:0/96, 64:ff9b::/96) are judged as the IPv4 address.
//
// The zero DialPolicy dials only public addresses, with no rate limit;
// DefaultDialPolicy adds the rate limit. The yaml tags are the keys of
// balancer serve's configuration file (outbound: in balancer.example.yaml).
type DialPolicy struct {
	// Loopback allows 127.0.0.0/8 and ::1: for tests and single-machine
	// setups whose remote peers listen on loopback. Default false.
	Loopback bool `yaml:"dial_loopback"`
	// Private allows 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16,
	// 100.64.0.0/10 (carrier-grade NAT) and fc00::/7: for a balancer whose
	// remote peers are in the same private network. Default false: a
	// balancer faces the public network, and its private side (the
	// backends' network, internal services) is what a compromised backend
	// would want to reach through it.
	Private bool `yaml:"dial_private"`
	// DialsPerSecondPerBackend caps how often one backend's outbound
	// requests make the balancer dial (a request to a peer it is already
	// connected to costs nothing), as a token bucket with a burst of one
	// second's worth, at least one dial; over it, RESOURCE_LIMIT_EXCEEDED.
	// 0 means no limit. Default 20: a DHT lookup from a backend (α = 3 to
	// 10 queries at a time) fits, and a sweep of a /24 network takes 13 s
	// instead of milliseconds.
	DialsPerSecondPerBackend float64 `yaml:"dials_per_second_per_backend"`
}

// DefaultDialPolicy returns the DialPolicy a Balancer has unless
// WithDialPolicy says otherwise: public addresses only, 20 dials per second
// per backend.
func DefaultDialPolicy() DialPolicy {
	return DialPolicy{DialsPerSecondPerBackend: 20}
}

// WithDialPolicy replaces the default DialPolicy. The Balancer applies it to
// the addresses an outbound request names (Forward.addrs) and to the text
// of DIAL_FAILED; only a DialGater given to the host (libp2p.ConnectionGater)
// covers every address the host dials, including those it learned from
// identify or DNS, so give both.
func WithDialPolicy(p DialPolicy) Option {
	return func(c *config) error {
		if p.DialsPerSecondPerBackend < 0 {
			return &OptionError{"dials per second per backend", p.DialsPerSecondPerBackend, "must not be negative"}
		}
		c.dial = &p
		return nil
	}
}

// WithBackendToBackend lets a backend open outbound streams to another
// allowed backend. Default false: the target of an outbound stream that is
// an allowed backend is refused with PERMISSION_DENIED, since a stream from
// the balancer is one that backend trusts (issue 11, item 1). The balancer's
// own protocols stay refused outbound either way.
func WithBackendToBackend(allow bool) Option {
	return func(c *config) error {
		c.backendToBackend = allow
		return nil
	}
}

// dialPolicy resolves the default.
func (c *config) dialPolicy() DialPolicy {
	if c.dial == nil {
		return DefaultDialPolicy()
	}
	return *c.dial
}

var (
	// neverDial are ranges no policy allows: link-local (and so the
	// metadata endpoint of AWS, GCP and Azure), the other metadata
	// endpoints, "this network", multicast, reserved and broadcast.
	neverDial = prefixes("169.254.0.0/16", "100.100.100.200/32", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4",
		"fe80::/10", "fd00:ec2::254/128", "::/128", "ff00::/8")
	privateRanges = prefixes("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
	nat64         = netip.MustParsePrefix("64:ff9b::/96")
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// addrClass names why a policy refuses an address, or "" when it allows it.
func (p DialPolicy) addrClass(a ma.Multiaddr) string {
	ip, ok := firstIP(a)
	if !ok {
		return "no IP address"
	}
	ip = ip.Unmap()
	if nat64.Contains(ip) {
		b := ip.As16()
		ip = netip.AddrFrom4([4]byte(b[12:]))
	}
	for _, pre := range neverDial {
		if pre.Contains(ip) {
			if ip.IsLinkLocalUnicast() {
				return "link-local"
			}
			return "special-purpose"
		}
	}
	if ip.IsLoopback() {
		if p.Loopback {
			return ""
		}
		return "loopback"
	}
	for _, pre := range privateRanges {
		if pre.Contains(ip) {
			if p.Private {
				return ""
			}
			return "private"
		}
	}
	return ""
}

// Allows reports whether the policy lets the balancer dial a. A DNS address
// is allowed here: the host resolves it before dialling, and a DialGater
// judges what it resolves to.
func (p DialPolicy) Allows(a ma.Multiaddr) bool {
	if isDNS(a) {
		return true
	}
	return p.addrClass(a) == ""
}

func firstIP(a ma.Multiaddr) (netip.Addr, bool) {
	if len(a) == 0 {
		return netip.Addr{}, false
	}
	c := a[0]
	switch c.Protocol().Code {
	case ma.P_IP4, ma.P_IP6:
		ip, ok := netip.AddrFromSlice(c.RawValue())
		return ip, ok
	}
	return netip.Addr{}, false
}

func isDNS(a ma.Multiaddr) bool {
	if len(a) == 0 {
		return false
	}
	switch a[0].Protocol().Code {
	case ma.P_DNS, ma.P_DNS4, ma.P_DNS6, ma.P_DNSADDR:
		return true
	}
	return false
}

// DialGater is a go-libp2p connection gater that applies a DialPolicy to
// every address the host dials, after DNS resolution; it allows every
// inbound connection (remote peers and backends dial the balancer, and the
// host's resource manager bounds them). Give it to the balancer's host with
// libp2p.ConnectionGater. The balancer's host dials nothing but the targets
// of outbound streams (its probes of backends never dial), so the policy
// meant for those applies to every dial.
type DialGater struct {
	Policy DialPolicy
}

// InterceptPeerDial allows every peer: the policy is about addresses.
func (g *DialGater) InterceptPeerDial(peer.ID) bool { return true }

// InterceptAddrDial applies the policy to a resolved address.
func (g *DialGater) InterceptAddrDial(_ peer.ID, a ma.Multiaddr) bool {
	return g.Policy.addrClass(a) == ""
}

// InterceptAccept allows every inbound connection.
func (g *DialGater) InterceptAccept(network.ConnMultiaddrs) bool { return true }

// InterceptSecured allows every connection once secured.
func (g *DialGater) InterceptSecured(network.Direction, peer.ID, network.ConnMultiaddrs) bool {
	return true
}

// InterceptUpgraded allows every upgraded connection.
func (g *DialGater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}

// dialLimiter is the per-backend token bucket of DialsPerSecondPerBackend.
// Its map holds allowed backends only (the acl bounds it).
type dialLimiter struct {
	mu      sync.Mutex
	buckets map[peer.ID]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// take spends a token of backend p at rate per second, or reports false.
func (l *dialLimiter) take(p peer.ID, rate float64) bool {
	if rate <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buckets == nil {
		l.buckets = map[peer.ID]*bucket{}
	}
	// A burst of one second's worth, and at least one dial, so that a
	// rate under 1 slows dials down instead of refusing them all.
	burst := max(1, rate)
	now := time.Now()
	bk := l.buckets[p]
	if bk == nil {
		bk = &bucket{tokens: burst, last: now}
		l.buckets[p] = bk
	}
	bk.tokens = min(burst, bk.tokens+rate*now.Sub(bk.last).Seconds())
	bk.last = now
	if bk.tokens < 1 {
		return false
	}
	bk.tokens--
	return true
}

// admitDial checks, before the balancer dials target for backend from, the
// backend's dial rate. A target already connected needs no dial.
func (b *Balancer) admitDial(from, target peer.ID) *wire.StatusError {
	if b.h.Network().Connectedness(target) == network.Connected {
		return nil
	}
	rate := b.settings().dialPolicy().DialsPerSecondPerBackend
	if !b.dials.take(from, rate) {
		return wire.Errorf(pb.Status_RESOURCE_LIMIT_EXCEEDED, "this backend's rate of %g dials per second is reached", rate)
	}
	return nil
}

// filterHints drops the addresses of an outbound request that the policy
// refuses, and counts them by reason.
func (p DialPolicy) filterHints(addrs []ma.Multiaddr) ([]ma.Multiaddr, map[string]int) {
	var refused map[string]int
	kept := addrs[:0:0]
	for _, a := range addrs {
		if isDNS(a) {
			kept = append(kept, a)
			continue
		}
		if c := p.addrClass(a); c != "" {
			if refused == nil {
				refused = map[string]int{}
			}
			refused[c]++
			continue
		}
		kept = append(kept, a)
	}
	return kept, refused
}

// dialFailure turns a failed Connect into a DIAL_FAILED text that says what
// was tried without being a port scanner: an address the policy refuses was
// never dialled (with a DialGater on the host) or its error is not shown
// (without one), so a backend learns nothing of the balancer's private side;
// errors of allowed addresses are shown as go-libp2p gives them.
func (p DialPolicy) dialFailure(target peer.ID, err error, refused map[string]int) *wire.StatusError {
	if refused == nil {
		refused = map[string]int{}
	}
	var shown []string
	var de *swarm.DialError
	switch {
	case errors.As(err, &de):
		for _, te := range de.DialErrors {
			if c := p.addrClass(te.Address); c != "" || errors.Is(te.Cause, swarm.ErrGaterDisallowedConnection) {
				if c == "" {
					c = "refused by the gater"
				}
				refused[c]++
				continue
			}
			shown = append(shown, fmt.Sprintf("[%s] %v", te.Address, te.Cause))
		}
		if len(shown) == 0 && de.Cause != nil && !errors.Is(de.Cause, swarm.ErrNoGoodAddresses) && !errors.Is(de.Cause, swarm.ErrGaterDisallowedConnection) &&
			(len(refused) == 0 || !errors.Is(de.Cause, swarm.ErrNoAddresses)) {
			shown = append(shown, de.Cause.Error())
		}
	case len(refused) > 0 && errors.Is(err, swarm.ErrNoAddresses):
		// Every address named was refused: the policy says it all.
	case err != nil:
		shown = append(shown, err.Error())
	}
	var parts []string
	if n := len(refused); n > 0 {
		kinds := make([]string, 0, n)
		for _, c := range []string{"loopback", "private", "link-local", "special-purpose", "no IP address", "refused by the gater"} {
			if refused[c] > 0 {
				kinds = append(kinds, fmt.Sprintf("%d %s", refused[c], c))
			}
		}
		parts = append(parts, "addresses not allowed by the balancer's dial policy: "+strings.Join(kinds, ", "))
	}
	parts = append(parts, shown...)
	if len(parts) == 0 {
		parts = append(parts, "no address to dial")
	}
	return wire.Errorf(pb.Status_DIAL_FAILED, "connecting to %s: %s", target, strings.Join(parts, "; "))
}

package sidecar

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// Route sends every stream that a balancer forwards on Protocol to the TCP
// service at Target.
type Route struct {
	Protocol protocol.ID
	// Target is the service's host:port.
	Target string
}

// ParseRoute parses the flag form `PROTO=HOST:PORT`, such as
// `/echo/1.0.0=127.0.0.1:7000`.
func ParseRoute(s string) (Route, error) {
	i := strings.LastIndex(s, "=")
	if i < 0 {
		return Route{}, fmt.Errorf("route %q: want PROTOCOL=HOST:PORT", s)
	}
	r := Route{Protocol: protocol.ID(s[:i]), Target: s[i+1:]}
	if err := wire.ValidateProtocol(string(r.Protocol)); err != nil {
		return Route{}, fmt.Errorf("route %q: %w", s, err)
	}
	if _, _, err := net.SplitHostPort(r.Target); err != nil {
		return Route{}, fmt.Errorf("route %q: target: %w", s, err)
	}
	return r, nil
}

// String returns the flag form.
func (r Route) String() string { return string(r.Protocol) + "=" + r.Target }

// Outbound is a local TCP listener whose every accepted connection is
// carried, through a balancer, as a stream to Peer on the first of
// Protocols that Peer accepts.
type Outbound struct {
	// Listen is the local host:port to listen on; port 0 picks one.
	Listen string
	// Peer is the remote peer to reach.
	Peer peer.ID
	// Addrs are optional addresses of Peer, passed to the balancer as
	// dial hints; without them it uses what it knows of Peer.
	Addrs []ma.Multiaddr
	// Protocols are acceptable protocols, most preferred first.
	Protocols []protocol.ID
}

// ParseOutbound parses the flag form
//
//	HOST:PORT=PEER_ID/PROTO[,/PROTO...]
//	HOST:PORT=MULTIADDR/p2p/PEER_ID/PROTO[,/PROTO...]
//
// such as `127.0.0.1:9000=12D3KooW.../echo/1.0.0,/echo/0.9.0`: the protocols
// follow the peer ID directly, and a multiaddr before it gives the balancer
// an address to dial the peer on.
func ParseOutbound(s string) (Outbound, error) {
	listen, target, ok := strings.Cut(s, "=")
	if !ok {
		return Outbound{}, fmt.Errorf("outbound %q: want HOST:PORT=PEER_ID/PROTOCOL[,/PROTOCOL...]", s)
	}
	if _, _, err := net.SplitHostPort(listen); err != nil {
		return Outbound{}, fmt.Errorf("outbound %q: listen address: %w", s, err)
	}
	o := Outbound{Listen: listen}
	var addr, id, protos string
	if strings.HasPrefix(target, "/") {
		i := strings.Index(target, "/p2p/")
		if i < 0 {
			return Outbound{}, fmt.Errorf("outbound %q: a multiaddr target must end in /p2p/PEER_ID before the protocols", s)
		}
		addr = target[:i]
		rest := target[i+len("/p2p/"):]
		j := strings.Index(rest, "/")
		if j < 0 {
			return Outbound{}, fmt.Errorf("outbound %q: no protocol after the peer ID", s)
		}
		id, protos = rest[:j], rest[j:]
	} else {
		j := strings.Index(target, "/")
		if j < 0 {
			return Outbound{}, fmt.Errorf("outbound %q: no protocol after the peer ID", s)
		}
		id, protos = target[:j], target[j:]
	}
	p, err := peer.Decode(id)
	if err != nil {
		return Outbound{}, fmt.Errorf("outbound %q: bad peer ID %q: %w", s, id, err)
	}
	o.Peer = p
	if addr != "" {
		a, err := ma.NewMultiaddr(addr)
		if err != nil {
			return Outbound{}, fmt.Errorf("outbound %q: peer address %q: %w", s, addr, err)
		}
		o.Addrs = []ma.Multiaddr{a}
	}
	for _, proto := range strings.Split(protos, ",") {
		if err := wire.ValidateProtocol(proto); err != nil {
			return Outbound{}, fmt.Errorf("outbound %q: %w", s, err)
		}
		o.Protocols = append(o.Protocols, protocol.ID(proto))
	}
	return o, nil
}

// ParseBalancer parses one balancer instance: a multiaddr ending in
// /p2p/PEER_ID, or several of the same instance separated by commas (say,
// its TCP and its QUIC address). A DNS name given here is one instance
// resolved when dialled, not followed (see Config.AddBalancer).
func ParseBalancer(s string) (peer.AddrInfo, error) {
	var ai peer.AddrInfo
	for _, part := range strings.Split(s, ",") {
		a, err := ma.NewMultiaddr(strings.TrimSpace(part))
		if err != nil {
			return peer.AddrInfo{}, fmt.Errorf("balancer %q: %w", s, err)
		}
		info, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			return peer.AddrInfo{}, fmt.Errorf("balancer %q: want a multiaddr ending in /p2p/PEER_ID: %w", s, err)
		}
		if ai.ID != "" && info.ID != ai.ID {
			return peer.AddrInfo{}, fmt.Errorf("balancer %q: the addresses of one instance name different peer IDs; give each instance its own --balancer", s)
		}
		ai.ID = info.ID
		ai.Addrs = append(ai.Addrs, info.Addrs...)
	}
	return ai, nil
}

// AddBalancer adds the balancer instances of one --balancer flag: a DNS
// name (/dnsaddr/DOMAIN, or /dns/DOMAIN/tcp/PORT/p2p/PEER_ID and its dns4,
// dns6 and UDP forms) to Names, to be followed as its records change; any
// other address (or several of one instance, see ParseBalancer) to
// Balancers.
func (c *Config) AddBalancer(s string) error {
	if a, err := ma.NewMultiaddr(strings.TrimSpace(s)); err == nil && backend.IsName(a) {
		if err := backend.CheckName(a); err != nil {
			return fmt.Errorf("balancer %q: a DNS name must end in /p2p/PEER_ID unless it is a /dnsaddr name", s)
		}
		c.Names = append(c.Names, a)
		return nil
	}
	ai, err := ParseBalancer(s)
	if err != nil {
		return err
	}
	c.Balancers = append(c.Balancers, ai)
	return nil
}

// Check reports the first invalid setting of c other than Key, in one line
// that names it, without starting anything: balancer backend calls it
// before it loads or creates the identity file, and Start calls it again.
// The backend package checks its own options (the TTL): they are not
// checked a second time here.
func (c *Config) Check() error {
	if len(c.Balancers) == 0 && len(c.Names) == 0 {
		return errors.New("balancer: none given; name at least one balancer address")
	}
	for _, n := range c.Names {
		fc := backend.FleetConfig{Name: n, Interval: c.ResolveInterval}
		if err := fc.Check(); err != nil {
			return err
		}
	}
	if len(c.Routes) == 0 && len(c.Outbound) == 0 {
		return errors.New("nothing to do: give at least one --route or --outbound")
	}
	seen := map[protocol.ID]bool{}
	for _, r := range c.Routes {
		if seen[r.Protocol] {
			return fmt.Errorf("route %s: protocol %s routed twice", r, r.Protocol)
		}
		seen[r.Protocol] = true
	}
	for _, o := range c.Outbound {
		if err := checkOutboundListen(o.Listen, c.OutboundPublic); err != nil {
			return err
		}
	}
	return backend.CheckOptions(c.backendOptions()...)
}

// backendOptions maps c onto the options of each link's Backend, but its
// logger.
func (c *Config) backendOptions() []backend.Option {
	var opts []backend.Option
	if c.TTL != 0 {
		opts = append(opts, backend.WithTTL(c.TTL))
	}
	return opts
}

// ErrNotLoopback is returned by Check and Start for an Outbound listener that is not
// on a loopback address while Config.OutboundPublic is false.
var ErrNotLoopback = errors.New("not a loopback address")

// checkOutboundListen refuses an outbound listen address off loopback unless
// public: anyone who can connect to it opens streams under the balancer's
// peer ID (issue 11). An empty host or 0.0.0.0 listens on every interface,
// and a host name other than localhost may resolve to anything, so both
// count as not loopback.
func checkOutboundListen(addr string, public bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("outbound %s: %w", addr, err)
	}
	if public || strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("outbound %s: %w: anyone who reaches it would open streams as the balancer's peer ID, unauthenticated; listen on 127.0.0.1, or add --outbound-public", addr, ErrNotLoopback)
}

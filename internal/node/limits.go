package node

import (
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// Limits are what an operator may change of a command's host limits: the
// resource manager's limits over the defaults (wire.Limits), the connection
// manager's watermarks, and the networks exempt from the per-IP limits. The
// zero value is the defaults. The yaml keys are those of the configuration
// file, where the three sit at the top level.
type Limits struct {
	// ResourceManager is applied over wire.Limits, scaled to the machine:
	// what it sets replaces the default, what it leaves out keeps it.
	ResourceManager ResourceManager `yaml:"resource_manager"`
	// ConnManager sets go-libp2p's connection manager.
	ConnManager ConnManager `yaml:"connection_manager"`
	// BackendNetworks are IP networks (CIDR, or a single address) exempt
	// from the per-IP connection limit (8 per IPv4 address, 8 per IPv6 /56
	// unless Config.ConnsPerIP says otherwise) and per-IP connection rate
	// limit, so that a backend host can open as many connections (QUIC
	// lanes) as it needs, and allowlisted. Loopback is always exempt.
	BackendNetworks []string `yaml:"backend_networks"`
}

// ResourceManager is go-libp2p's rcmgr.PartialLimitConfig, the vocabulary
// kubo's Swarm.ResourceMgr exposes; in YAML its keys are written in
// snake_case (see UnmarshalYAML).
type ResourceManager struct {
	rcmgr.PartialLimitConfig
}

// ConnManager is go-libp2p's connection manager: past HighWater connections
// it closes the least valuable ones, down to LowWater, sparing protected
// peers (the balancer–backend links) and connections younger than
// GracePeriod. A zero field keeps the default: LowWater the system's inbound
// connection limit, HighWater its total connection limit, so that with the
// default limits it never trims a connection that the resource manager let
// in (trimming would reset the forwarded streams on it), and GracePeriod one
// minute.
type ConnManager struct {
	LowWater    int           `yaml:"low_water"`
	HighWater   int           `yaml:"high_water"`
	GracePeriod time.Duration `yaml:"grace_period"`
}

// DefaultGracePeriod is the connection manager's default grace period,
// go-libp2p's.
const DefaultGracePeriod = time.Minute

// Concrete returns the resource manager limits l gives on this machine,
// with raised limits for linkPeers.
func (l Limits) Concrete(linkPeers ...peer.ID) rcmgr.ConcreteLimitConfig {
	scaling := wire.Limits(linkPeers...)
	return l.ResourceManager.PartialLimitConfig.Build(scaling.AutoScale())
}

// watermarks returns the connection manager's settings under limits c.
func (l Limits) watermarks(c rcmgr.ConcreteLimitConfig) (low, high int, grace time.Duration) {
	sys := c.ToPartialLimitConfig().System
	low, high, grace = l.ConnManager.LowWater, l.ConnManager.HighWater, l.ConnManager.GracePeriod
	if low == 0 {
		low = sys.ConnsInbound.Build(0)
	}
	if high == 0 {
		high = max(sys.Conns.Build(0), low)
	}
	if grace == 0 {
		grace = DefaultGracePeriod
	}
	return low, high, grace
}

// Check reports the first invalid setting of l, in one line naming it.
func (l Limits) Check() error {
	cm := l.ConnManager
	switch {
	case cm.LowWater < 0:
		return fmt.Errorf("connection_manager: low_water %d: must not be negative", cm.LowWater)
	case cm.HighWater < 0:
		return fmt.Errorf("connection_manager: high_water %d: must not be negative", cm.HighWater)
	case cm.LowWater > 0 && cm.HighWater > 0 && cm.LowWater > cm.HighWater:
		return fmt.Errorf("connection_manager: low_water %d is above high_water %d", cm.LowWater, cm.HighWater)
	case cm.GracePeriod < 0:
		return fmt.Errorf("connection_manager: grace_period %v: must not be negative", cm.GracePeriod)
	}
	_, err := l.networks()
	return err
}

// networks parses BackendNetworks.
func (l Limits) networks() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range l.BackendNetworks {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("backend_networks %q: want a network such as 10.0.0.0/8 or an address", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// prefixAddr writes an IP network as a multiaddr, the allowlist's form.
func prefixAddr(p netip.Prefix) (ma.Multiaddr, error) {
	proto := "ip4"
	if p.Addr().Is6() {
		proto = "ip6"
	}
	return ma.NewMultiaddr(fmt.Sprintf("/%s/%s/ipcidr/%d", proto, p.Addr(), p.Bits()))
}

// connManager builds the connection manager for limits c.
func (l Limits) connManager(c rcmgr.ConcreteLimitConfig) (*connmgr.BasicConnMgr, error) {
	low, high, grace := l.watermarks(c)
	return connmgr.NewConnManager(low, high, connmgr.WithGracePeriod(grace))
}

// Capacity is what a host's limits let through, for the log line at start
// and the status page.
type Capacity struct {
	// Peers is how many remote peers can be connected at once (one
	// connection each): the system's inbound connection limit, and for TCP
	// its file descriptor limit too.
	Peers int `json:"peers"`
	// PeerStreams is what one remote peer may hold in each direction.
	PeerStreams int `json:"peer_streams"`
	// Streams is how many forwarded streams can be in flight at once over
	// TCP, each counted twice (inbound from the remote peer, outbound to
	// the backend): the stream limits, and the memory limit at 256 KiB of
	// yamux receive window per stream.
	Streams int `json:"streams"`
	// StreamsQUIC is the same over QUIC, which reserves no memory up
	// front; it needs the backend to open lanes past 256 streams.
	StreamsQUIC int `json:"streams_quic"`
	// Memory is the memory ceiling of the resource manager, in bytes.
	Memory int64 `json:"memory"`
}

// CapacityOf returns what limits c let through on a balancer.
func CapacityOf(c rcmgr.ConcreteLimitConfig) Capacity {
	p := c.ToPartialLimitConfig()
	sys, svc, pd := p.System, p.Service[wire.ServiceName], p.PeerDefault
	peers := min(sys.ConnsInbound.Build(0), sys.Conns.Build(0), sys.FD.Build(0))
	quic := min(sys.StreamsInbound.Build(0), sys.StreamsOutbound.Build(0), sys.Streams.Build(0)/2,
		svc.StreamsInbound.Build(math.MaxInt), svc.StreamsOutbound.Build(math.MaxInt), svc.Streams.Build(math.MaxInt)/2)
	mem := sys.Memory.Build(0)
	tcp := min(quic, int(mem/(2*256<<10)))
	return Capacity{Peers: peers, PeerStreams: min(pd.StreamsInbound.Build(0), pd.Streams.Build(0)),
		Streams: tcp, StreamsQUIC: quic, Memory: mem}
}

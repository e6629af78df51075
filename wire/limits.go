package wire

import (
	"math"

	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
)

// Limits returns the go-libp2p resource manager limits of a host on either
// side of a balancer–backend link, sized for a balancer: the one table of
// defaults behind `balancer serve` and `balancer backend` (docs/spec.md,
// "Limits", lists it with the figures of a 24 GiB machine). Build it with
// AutoScale, as go-libp2p's own defaults are built, or with Scale.
//
// go-libp2p's defaults (rcmgr.DefaultLimits) suit a node that talks to a few
// hundred peers, each on its own protocols. A balancer is a fan-in node:
// thousands of remote peers, one or a few backends, and every forwarded
// stream counted twice, inbound from the remote peer and outbound to the
// backend, both on the same host. So, starting from go-libp2p's defaults:
//
//   - the system and the transient scopes (handshakes and protocol
//     negotiations in progress) are raised to the crowd: at least 1,024
//     remote peers and 4,096 forwarded streams on the smallest host, and
//     more per GiB of memory, as AutoScale does;
//   - memory, which bounds what yamux may buffer (it reserves a 256 KiB
//     receive window for every stream), may take half of the machine's
//     memory instead of an eighth;
//   - each routed protocol may carry as many streams as the system, so that
//     no protocol-wide limit stops the crowd below the system limit;
//   - one remote peer is held to PeerStreams streams each way and 8
//     connections, whatever its protocols and services: the per-peer and
//     per-protocol-per-peer scopes say the same, so one number governs;
//   - only the peers across the link (the allowed backends on a balancer,
//     the balancers on a backend) get limits without a per-peer bound
//     (AddLimits), since every forwarded stream travels between them.
//
// Every limit can still be changed: take the result, change it, or build it
// and apply an rcmgr.PartialLimitConfig over it, which is what the
// resource_manager section of the configuration file does.
func Limits(linkPeers ...peer.ID) rcmgr.ScalingLimitConfig {
	cfg := rcmgr.DefaultLimits // a copy: its maps are nil
	crowd := rcmgr.BaseLimit{
		ConnsInbound:    1024,
		ConnsOutbound:   512,
		Conns:           1536,
		StreamsInbound:  4096,
		StreamsOutbound: 4096,
		Streams:         8192,
		Memory:          128 << 20,
		FD:              256,
	}
	crowdPerGiB := rcmgr.BaseLimitIncrease{
		ConnsInbound:    256,
		ConnsOutbound:   128,
		Conns:           384,
		StreamsInbound:  8192,
		StreamsOutbound: 8192,
		Streams:         16384,
		// AutoScale's unit is a GiB of an eighth of the machine's memory,
		// so 4 GiB per unit is half of the machine.
		Memory:     4 << 30,
		FDFraction: 1,
	}
	cfg.SystemBaseLimit, cfg.SystemLimitIncrease = crowd, crowdPerGiB
	cfg.TransientBaseLimit = rcmgr.BaseLimit{
		ConnsInbound:    256,
		ConnsOutbound:   128,
		Conns:           384,
		StreamsInbound:  1024,
		StreamsOutbound: 1024,
		Streams:         2048,
		Memory:          64 << 20,
		FD:              64,
	}
	cfg.TransientLimitIncrease = rcmgr.BaseLimitIncrease{
		ConnsInbound:    64,
		ConnsOutbound:   32,
		Conns:           96,
		StreamsInbound:  512,
		StreamsOutbound: 512,
		Streams:         1024,
		Memory:          128 << 20,
		FDFraction:      0.25,
	}
	cfg.ProtocolBaseLimit = rcmgr.BaseLimit{
		StreamsInbound:  crowd.StreamsInbound,
		StreamsOutbound: crowd.StreamsOutbound,
		Streams:         crowd.Streams,
		Memory:          crowd.Memory,
	}
	cfg.ProtocolLimitIncrease = rcmgr.BaseLimitIncrease{
		StreamsInbound:  crowdPerGiB.StreamsInbound,
		StreamsOutbound: crowdPerGiB.StreamsOutbound,
		Streams:         crowdPerGiB.Streams,
		Memory:          crowdPerGiB.Memory,
	}
	onePeer := rcmgr.BaseLimit{
		ConnsInbound:    PeerConns,
		ConnsOutbound:   PeerConns,
		Conns:           PeerConns,
		StreamsInbound:  PeerStreams,
		StreamsOutbound: PeerStreams,
		Streams:         2 * PeerStreams,
		// Room for every stream's yamux window, twice over, so that
		// windows can grow (yamux grows one only while the scope is
		// under half full).
		Memory: 2 * PeerStreams * yamuxWindow,
		FD:     2 * PeerConns,
	}
	cfg.PeerBaseLimit, cfg.PeerLimitIncrease = onePeer, rcmgr.BaseLimitIncrease{}
	cfg.ProtocolPeerBaseLimit = rcmgr.BaseLimit{
		StreamsInbound:  onePeer.StreamsInbound,
		StreamsOutbound: onePeer.StreamsOutbound,
		Streams:         onePeer.Streams,
		Memory:          onePeer.Memory,
	}
	cfg.ProtocolPeerLimitIncrease = rcmgr.BaseLimitIncrease{}
	AddLimits(&cfg, linkPeers...)
	return cfg
}

// The per-remote-peer limits of Limits.
const (
	// PeerStreams is how many streams one remote peer may have open on a
	// host with Limits in each direction, on all its protocols together.
	// The next inbound stream is reset with code 0x1002 (resource limit
	// exceeded).
	PeerStreams = 512
	// PeerConns is how many connections one remote peer may have at once.
	PeerConns = 8
)

// yamuxWindow is what go-yamux reserves in the resource manager for every
// stream it opens or accepts: its initial receive window
// (initialStreamWindow in go-yamux's const.go).
const yamuxWindow = 256 << 10

// AddLimits raises, in a go-libp2p resource manager configuration, the
// limits that the balancer protocol would otherwise hit long before any real
// load, and leaves every other limit as the operator set it. Limits calls
// it; call it directly to keep go-libp2p's other defaults.
//
// Every forwarded stream travels between the balancer and a backend on the
// one protocol ForwardID, so the default per-protocol-per-peer limit (64
// inbound streams) and per-peer limit (256 inbound streams, 8 connections)
// would cap a backend at a few dozen concurrent streams. Pass the peers on
// the other side of the balancer–backend link: the allowed backends on a
// balancer, the balancers on a backend. Only those peers get the raised
// per-peer limits, which bound every stream of a peer whatever its service
// or protocol; the forward protocol's and the service's limits are raised
// for everyone, which is safe because both sides refuse a forward stream
// from any other peer before reading from it, and the per-peer limits still
// hold any other peer.
func AddLimits(cfg *rcmgr.ScalingLimitConfig, peers ...peer.ID) {
	cfg.AddProtocolLimit(ForwardID, wide, rcmgr.BaseLimitIncrease{})
	cfg.AddProtocolPeerLimit(ForwardID, wide, rcmgr.BaseLimitIncrease{})
	cfg.AddServiceLimit(ServiceName, wide, rcmgr.BaseLimitIncrease{})
	cfg.AddServicePeerLimit(ServiceName, wide, rcmgr.BaseLimitIncrease{})
	for _, p := range peers {
		cfg.AddPeerLimit(p, wide, rcmgr.BaseLimitIncrease{})
	}
}

// wide is "no limit in practice"; the system-wide limits still apply. 1,024
// connections leave room for a backend's QUIC lanes (256 streams each).
var wide = rcmgr.BaseLimit{
	Streams:         math.MaxInt32,
	StreamsInbound:  math.MaxInt32,
	StreamsOutbound: math.MaxInt32,
	Conns:           1024,
	ConnsInbound:    1024,
	ConnsOutbound:   1024,
	FD:              1024,
	Memory:          math.MaxInt64,
}

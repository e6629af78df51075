package wire

import (
	"math"

	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
)

// AddLimits raises, in a go-libp2p resource manager configuration, the
// limits that the balancer protocol would otherwise hit long before any real
// load, and leaves every other limit as the operator set it.
//
// Every forwarded stream travels between the balancer and a backend on the
// one protocol ForwardID, so the default per-protocol-per-peer limit (64
// inbound streams) and per-peer limit (256 inbound streams, 8 connections)
// would cap a backend at a few dozen concurrent streams. Pass the peers on
// the other side of the balancer–backend link: the allowed backends on a
// balancer, the balancers on a backend. Only those peers get the raised
// per-peer limits; the protocol and service limits are raised for everyone,
// which is safe because both sides refuse a forward stream from any other
// peer before reading from it.
func AddLimits(cfg *rcmgr.ScalingLimitConfig, peers ...peer.ID) {
	cfg.AddProtocolLimit(ForwardID, wide, rcmgr.BaseLimitIncrease{})
	cfg.AddProtocolPeerLimit(ForwardID, wide, rcmgr.BaseLimitIncrease{})
	cfg.AddServiceLimit(ServiceName, wide, rcmgr.BaseLimitIncrease{})
	cfg.AddServicePeerLimit(ServiceName, wide, rcmgr.BaseLimitIncrease{})
	for _, p := range peers {
		cfg.AddPeerLimit(p, wide, rcmgr.BaseLimitIncrease{})
	}
}

// wide is "no limit in practice"; the system-wide limits still apply.
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

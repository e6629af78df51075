package balancer

import (
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
)

// RouteInfo describes one route, for status pages and the admin API.
type RouteInfo struct {
	Protocol  protocol.ID
	Backend   peer.ID
	Expires   time.Time
	Weight    uint32
	Connected bool // false while the route is suspended
	Policy    Policy
}

// BackendInfo describes one allowed backend.
type BackendInfo struct {
	ID           peer.ID
	Addrs        []ma.Multiaddr // remote addresses of its connections
	Connected    bool
	EjectedUntil time.Time // zero, or in the past, when healthy
	Streams      int64     // forwarded streams in flight, both directions
	Outbound     int64     // outbound streams in flight
	BytesTo      int64     // bytes forwarded to it so far
	BytesFrom    int64     // bytes forwarded from it so far
	Routes       int
	// LinkFull counts the inbound streams this backend could not be
	// offered because every connection to it was at QUIC's 256-stream cap
	// and it opened no lane (docs/spec.md, "Stream capacity and lanes").
	LinkFull int64
}

// Routes returns every route, sorted by protocol, then backend.
func (b *Balancer) Routes() []RouteInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []RouteInfo
	for proto, pl := range b.pools {
		policy := b.settings().policyFor(proto)
		for _, r := range pl.routes {
			out = append(out, RouteInfo{
				Protocol:  proto,
				Backend:   r.backend.id,
				Expires:   r.expires,
				Weight:    r.weight,
				Connected: r.backend.connected,
				Policy:    policy,
			})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Protocol != out[j].Protocol {
			return out[i].Protocol < out[j].Protocol
		}
		return out[i].Backend < out[j].Backend
	})
	return out
}

// Backends returns every allowed backend and every peer that used the
// balancer as one, sorted by peer ID.
func (b *Balancer) Backends() []BackendInfo {
	b.mu.Lock()
	ids := map[peer.ID]*backendState{}
	for p := range b.settings().acl {
		ids[p] = nil
	}
	for p, be := range b.backends {
		ids[p] = be
	}
	out := make([]BackendInfo, 0, len(ids))
	for p, be := range ids {
		info := BackendInfo{ID: p}
		if be != nil {
			info.EjectedUntil = be.health.ejectedUntil
			info.Streams = be.active.Load()
			info.Outbound = be.outbound.Load()
			info.BytesTo = be.bytesTo.Load()
			info.BytesFrom = be.bytesFrom.Load()
			info.LinkFull = be.linkFull.Load()
			info.Routes = len(be.routes)
		}
		out = append(out, info)
	}
	b.mu.Unlock()
	for i := range out {
		for _, c := range b.h.Network().ConnsToPeer(out[i].ID) {
			out[i].Addrs = append(out[i].Addrs, c.RemoteMultiaddr())
		}
		out[i].Connected = len(out[i].Addrs) > 0
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Addrs returns the balancer's listen addresses, each ending in /p2p/ and
// its peer ID.
func (b *Balancer) Addrs() []ma.Multiaddr {
	p2p, err := ma.NewComponent("p2p", b.h.ID().String())
	if err != nil {
		return nil
	}
	var out []ma.Multiaddr
	for _, a := range b.h.Addrs() {
		out = append(out, a.Encapsulate(p2p.Multiaddr()))
	}
	return out
}

package balancer

import (
	"io"
	"strings"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// This file is the balancer's entry on the host's stream mux: which routed
// protocols the host accepts, the handler it calls for them, and the
// announcement of changes to identify.

// refresh makes the host accept proto exactly while a live backend serves
// it. Removing the handler is what takes the protocol out of identify (the
// host pushes the change to connected peers) and makes a new stream on it
// fail at negotiation rather than be accepted and reset. Called with b.mu
// held.
//
// The handler goes on the host's mux directly, and the change is announced
// by announce, once per request rather than once per protocol: every
// announcement makes identify rebuild and sort its whole protocol list, so
// host.SetStreamHandler per protocol made registering N routes cost O(N²):
// BenchmarkRoutesAdd, 100 new routes on a backend already holding 3,900,
// took 322 ms (measured in commit 16e786d, fixed in 346a755; after the fix
// 3.7 ms at 1,700, see docs/performance.md).
func (b *Balancer) refresh(proto protocol.ID) {
	if b.closed {
		return
	}
	pl := b.pools[proto]
	live := pl != nil && pl.live()
	switch {
	case live && !b.installed[proto]:
		b.installed[proto] = true
		b.h.Mux().AddHandler(proto, b.muxHandler)
		b.added = append(b.added, proto)
	case !live && b.installed[proto]:
		delete(b.installed, proto)
		b.h.Mux().RemoveHandler(proto)
		b.removed = append(b.removed, proto)
	}
}

// muxHandler adapts handleInbound to the mux, as host.SetStreamHandler
// would.
func (b *Balancer) muxHandler(_ protocol.ID, rwc io.ReadWriteCloser) error {
	b.handleInbound(rwc.(network.Stream))
	return nil
}

// announce tells the host's subscribers (identify, which pushes to connected
// peers) which protocols refresh added and removed since the last
// announcement. Called with b.mu held.
func (b *Balancer) announce() {
	if len(b.added) == 0 && len(b.removed) == 0 {
		return
	}
	_ = b.protoEmitter.Emit(event.EvtLocalProtocolsUpdated{Added: b.added, Removed: b.removed})
	b.added, b.removed = nil, nil
}

// hostProtocols returns the protocols the host serves itself (identify,
// ping and whatever else the host's owner registered), which are reserved:
// every protocol the host handles except the routes we installed. Called
// with b.mu held.
func (b *Balancer) hostProtocols() map[protocol.ID]bool {
	own := map[protocol.ID]bool{}
	for _, p := range b.h.Mux().Protocols() {
		if !b.installed[p] {
			own[p] = true
		}
	}
	return own
}

// isReserved reports whether proto must never be routed: it is under the
// balancer protocol's own prefix, or in hostProtos.
func isReserved(proto protocol.ID, hostProtos map[protocol.ID]bool) bool {
	return strings.HasPrefix(string(proto), wire.ProtocolPrefix) || hostProtos[proto]
}

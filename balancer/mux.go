package balancer

import (
	"io"
	"slices"
	"strings"

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
// by announce (identify.go), once per request at most, and at most once per
// PushInterval, rather than once per protocol: every
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
		b.added, b.removed = pending(b.added, b.removed, proto)
	case !live && b.installed[proto]:
		delete(b.installed, proto)
		b.h.Mux().RemoveHandler(proto)
		b.removed, b.added = pending(b.removed, b.added, proto)
	}
}

// pending records a change of proto not announced yet: it goes into to,
// unless it undoes a change still pending in undo (a protocol added and
// removed again before the announcement), which then cancels out.
func pending(to, undo []protocol.ID, proto protocol.ID) ([]protocol.ID, []protocol.ID) {
	if i := slices.Index(undo, proto); i >= 0 {
		return to, slices.Delete(undo, i, i+1)
	}
	return append(to, proto), undo
}

// muxHandler adapts handleInbound to the mux, as host.SetStreamHandler
// would.
func (b *Balancer) muxHandler(_ protocol.ID, rwc io.ReadWriteCloser) error {
	b.handleInbound(rwc.(network.Stream))
	return nil
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

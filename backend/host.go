package backend

import (
	"context"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
)

// Host is the backend seen as a go-libp2p host.Host with the balancer's
// identity, so that an unmodified protocol service (ping, a request–response
// protocol, ...) runs behind the balancer: its ID is the shared peer ID, its
// handlers are registered with the balancers, and its NewStream goes out
// through a balancer. Everything else (Peerstore, Network, Mux, EventBus,
// ConnManager) is the backend's own host.
type Host struct {
	host.Host
	b *Backend
}

var _ host.Host = (*Host)(nil)

// NewHost returns b as a host.Host.
func NewHost(b *Backend) *Host { return &Host{Host: b.h, b: b} }

// Backend returns the Backend behind h.
func (h *Host) Backend() *Backend { return h.b }

// ID returns the balancer's shared peer ID.
func (h *Host) ID() peer.ID { return h.b.ID() }

// Addrs returns the balancer's addresses, the ones remote peers dial.
func (h *Host) Addrs() []ma.Multiaddr { return h.b.h.Peerstore().Addrs(h.b.ID()) }

// SetStreamHandler registers pid with the balancers; see Backend.SetStreamHandler.
func (h *Host) SetStreamHandler(pid protocol.ID, handler network.StreamHandler) {
	h.b.SetStreamHandler(pid, handler)
}

// SetStreamHandlerMatch registers pid exactly: the balancer routes exact
// protocol IDs, so match is not used.
func (h *Host) SetStreamHandlerMatch(pid protocol.ID, _ func(protocol.ID) bool, handler network.StreamHandler) {
	h.b.SetStreamHandler(pid, handler)
}

// RemoveStreamHandler releases pid; see Backend.RemoveStreamHandler.
func (h *Host) RemoveStreamHandler(pid protocol.ID) { h.b.RemoveStreamHandler(pid) }

// NewStream opens a stream through a balancer; see Backend.NewStream.
func (h *Host) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	return h.b.NewStream(ctx, p, pids...)
}

// Connect only records pi's addresses: the balancer, not this host, connects
// to remote peers, when a stream is opened, and it is given these addresses
// as hints.
func (h *Host) Connect(_ context.Context, pi peer.AddrInfo) error {
	h.b.h.Peerstore().AddAddrs(pi.ID, pi.Addrs, peerstore.TempAddrTTL)
	return nil
}

// Close closes the Backend, not the backend's own host.
func (h *Host) Close() error { return h.b.Close() }

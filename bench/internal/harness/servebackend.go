package harness

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/internal/crowd"
	lbnode "github.com/libp2p-balancer/libp2p-balancer/internal/node"
)

// startServeBackend is the agent op "serve-backend": the serve mode's
// backend, in a process of its own as a deployment has it, so that the
// crowd of client peers in the driver's process cannot starve it of CPU
// (over QUIC, 1,000 handshakes in the driver once kept it from answering
// the balancer's 5 s probe, and the balancer rightly dropped it). It builds
// its host as `balancer backend` does (node.New with the balancer as link
// peer), registers proto on lb, answers it with crowd.Echo, and returns once
// the balancer has granted the route.
func (n *node) startServeBackend(ctx context.Context, name string, key []byte, lb peer.AddrInfo, proto protocol.ID) error {
	k, err := crypto.UnmarshalPrivateKey(key)
	if err != nil {
		return fmt.Errorf("serve-backend: key: %w", err)
	}
	h, err := lbnode.New(lbnode.Config{Key: k, LinkPeers: []peer.ID{lb.ID}})
	if err != nil {
		return err
	}
	b, err := backend.New(h, []peer.AddrInfo{lb}, backend.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		h.Close()
		return err
	}
	n.mu.Lock()
	n.hosts[name] = h
	n.backends[name] = b
	n.mu.Unlock()
	b.SetStreamHandler(proto, crowd.Echo)
	for {
		st := b.Status()
		if len(st) > 0 && len(st[0].Protocols) > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("serve-backend: route not granted: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

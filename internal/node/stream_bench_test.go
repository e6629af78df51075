package node_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// BenchmarkStream times a new stream into a host built by node.New (open,
// negotiate, one byte there and back), over TCP: its allocations show what
// the resource manager's accounting costs per stream on the allow path.
func BenchmarkStream(b *testing.B) {
	key, _ := testnet.Key(b)
	h, err := node.New(node.Config{Key: key, Listen: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	const proto = protocol.ID("/echo/1.0.0")
	h.SetStreamHandler(proto, func(s network.Stream) {
		defer s.Close()
		io.Copy(s, s)
	})
	// The dialer accounts nothing, so the figures are the node's.
	dk, _ := testnet.Key(b)
	d, err := libp2p.New(libp2p.Identity(dk), libp2p.ResourceManager(&network.NullResourceManager{}),
		libp2p.NoListenAddrs, libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableRelay())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	testnet.Connect(b, d, h)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		s, err := d.NewStream(ctx, h.ID(), proto)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Write([]byte{1}); err != nil {
			b.Fatal(err)
		}
		var one [1]byte
		if _, err := io.ReadFull(s, one[:]); err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
}

package backend_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// TestHostStreams: a handler registered through the host adapter gets
// streams whose connection reports the remote peer that opened them and the
// balancer as the local peer; the adapter's ID and addresses are the
// balancer's; its Connect only records addresses, and NewStream reaches a
// remote peer, which sees the balancer.
func TestHostStreams(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a := lbtest.NewIdentity(t)
		// E listens on loopback, which the default dial policy refuses.
		f := lbtest.New(t, tr, []lbtest.Identity{a}, balancer.WithDialPolicy(balancer.DialPolicy{Loopback: true}))
		be, _ := f.NewBackend(a, nil)
		h := backend.NewHost(be)
		if h.ID() != f.Host.ID() {
			t.Fatalf("adapter ID %s, want the balancer's %s", h.ID(), f.Host.ID())
		}

		const proto protocol.ID = "/test/host/in"
		type seen struct {
			remote, local peer.ID
			proto         protocol.ID
		}
		seenc := make(chan seen, 1)
		h.SetStreamHandler(proto, func(s network.Stream) {
			seenc <- seen{s.Conn().RemotePeer(), s.Conn().LocalPeer(), s.Protocol()}
			testnet.Echo(s)
		})
		lbtest.WaitRegistered(t, be, proto)
		// Registered, so connected: the balancer's addresses are known.
		if addrs := h.Addrs(); len(addrs) == 0 {
			t.Fatal("adapter has no addresses")
		} else {
			for _, ad := range addrs {
				if !slices.ContainsFunc(f.Host.Addrs(), ad.Equal) {
					t.Fatalf("adapter address %s is not one of the balancer's %v", ad, f.Host.Addrs())
				}
			}
		}
		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, proto)
		if err := f.EchoOnce(d, proto, []byte("through the adapter")); err != nil {
			t.Fatal(err)
		}
		if got, want := <-seenc, (seen{d.ID(), f.Host.ID(), proto}); got != want {
			t.Fatalf("the handler saw %+v, want %+v", got, want)
		}

		// Outbound: E serves proto; the adapter connects and opens.
		const out protocol.ID = "/test/host/out"
		e := testnet.NewHost(t, tr, testnet.Options{})
		eSaw := make(chan peer.ID, 1)
		e.SetStreamHandler(out, func(s network.Stream) {
			eSaw <- s.Conn().RemotePeer()
			testnet.Echo(s)
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.Connect(ctx, testnet.Info(e)); err != nil {
			t.Fatal(err)
		}
		if c := be.StreamsInFlight(); c != 0 {
			t.Fatalf("%d streams in flight after Connect", c)
		}
		s, err := h.NewStream(ctx, e.ID(), out)
		if err != nil {
			t.Fatalf("adapter NewStream to E: %v", err)
		}
		testnet.CheckRoundTrip(t, s, []byte("to E"))
		if got := <-eSaw; got != f.Host.ID() {
			t.Fatalf("E saw %s, want the balancer %s", got, f.Host.ID())
		}

		// Close closes the Backend, not the backend's host.
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
		if err := be.Close(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Backend.Close after Host.Close = %v, want net.ErrClosed", err)
		}
		testnet.Connect(t, h.Host, e)
	})
}

// TestPingThroughBalancer runs go-libp2p's own ping service, unmodified, on
// a backend through the host adapter while the balancer's host has ping
// disabled: a remote peer pings the balancer's peer ID and the backend
// answers.
func TestPingThroughBalancer(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a := lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{a})
		be, _ := f.NewBackend(a, nil)
		ping.NewPingService(backend.NewHost(be))

		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, ping.ID)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		results := ping.Ping(ctx, d, f.Host.ID())
		for i := 0; i < 3; i++ {
			res := <-results
			if res.Error != nil {
				t.Fatalf("ping %d: %v", i, res.Error)
			}
		}
	})
}

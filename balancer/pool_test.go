package balancer_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

const pooled protocol.ID = "/test/pooled/1.0.0"

// countingEcho echoes and counts the streams it served.
func countingEcho(n *atomic.Int64) network.StreamHandler {
	return func(s network.Stream) {
		n.Add(1)
		testnet.Echo(s)
	}
}

// openAndEcho opens proto from d to the balancer and round-trips payload.
func openAndEcho(t *testing.T, d host.Host, lbID peer.ID, proto protocol.ID, payload []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.NewStream(ctx, lbID, proto)
	if err != nil {
		t.Fatalf("open %s: %v", proto, err)
	}
	testnet.CheckRoundTrip(t, s, payload)
}

// TestPoolSharesStreams: two backends registering one protocol share its
// streams.
func TestPoolSharesStreams(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a, b := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{a, b})
		var na, nb atomic.Int64
		ba, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{pooled: countingEcho(&na)})
		bb, _ := f.NewBackend(b, map[protocol.ID]network.StreamHandler{pooled: countingEcho(&nb)})
		lbtest.WaitRegistered(t, ba, pooled)
		lbtest.WaitRegistered(t, bb, pooled)
		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, pooled)
		const n = 40
		for i := 0; i < n; i++ {
			openAndEcho(t, d, f.Host.ID(), pooled, []byte(fmt.Sprint(i)))
		}
		if na.Load()+nb.Load() != n || na.Load() < n/4 || nb.Load() < n/4 {
			t.Fatalf("streams per backend: %d and %d, want about %d each", na.Load(), nb.Load(), n/2)
		}
	})
}

// scriptedBackend registers proto with the balancer by hand and answers
// every forward stream with answer (nil: never answers).
func scriptedBackend(t *testing.T, f *lbtest.Fixture, who lbtest.Identity, proto protocol.ID, answer *pb.ForwardResponse) *atomic.Int64 {
	t.Helper()
	h := testnet.NewHost(t, f.Transport, testnet.Options{Key: who.Key, LinkPeers: []peer.ID{f.Host.ID()}, NoListen: true})
	var offered atomic.Int64
	var held sync.Mutex
	var streams []network.Stream
	h.SetStreamHandler(wire.ForwardID, func(s network.Stream) {
		offered.Add(1)
		var req pb.Forward
		if err := wire.NewReader(s).ReadMsg(&req); err != nil {
			s.Reset()
			return
		}
		if answer == nil {
			held.Lock()
			streams = append(streams, s) // hang: never answer
			held.Unlock()
			return
		}
		wire.WriteFinal(s, answer)
	})
	t.Cleanup(func() {
		held.Lock()
		defer held.Unlock()
		for _, s := range streams {
			s.Reset()
		}
	})
	testnet.Connect(t, h, f.Host)
	if resp := lbtest.RawRequest(t, h, f.Host.ID(), &pb.RoutingRequest{Protocols: []string{string(proto)}, TtlSeconds: 60}); resp.Status != pb.Status_OK {
		t.Fatalf("scripted backend registers: %v", resp)
	}
	return &offered
}

// TestFailover: a backend that refuses and one that never answers within the
// handshake deadline each pass the stream on to the next backend, and every
// byte the remote peer sent before any backend accepted arrives.
func TestFailover(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		good, refusing, hanging := lbtest.NewIdentity(t), lbtest.NewIdentity(t), lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{good, refusing, hanging}, balancer.WithHandshakeTimeout(300*time.Millisecond))
		refused := scriptedBackend(t, f, refusing, pooled, &pb.ForwardResponse{Status: pb.Status_REJECTED, Text: "overloaded"})
		hung := scriptedBackend(t, f, hanging, pooled, nil)
		var served atomic.Int64
		be, _ := f.NewBackend(good, map[protocol.ID]network.StreamHandler{pooled: countingEcho(&served)})
		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, pooled)
		lbtest.WaitRegistered(t, be, pooled)

		const n = 6
		for i := 0; i < n; i++ {
			// 1 MiB, written at once: most of it is sent before any backend
			// has accepted.
			openAndEcho(t, d, f.Host.ID(), pooled, testnet.RandomBytes(1<<20))
		}
		if served.Load() != n {
			t.Fatalf("good backend served %d streams, want %d", served.Load(), n)
		}
		if refused.Load() == 0 || hung.Load() == 0 {
			t.Fatalf("failover not exercised: refusing backend offered %d, hanging %d", refused.Load(), hung.Load())
		}
	})
}

// TestAcceptorRefusal: a backend's acceptor that refuses a stream (say, its
// local service is down) sends it on to the next backend with no byte lost.
func TestAcceptorRefusal(t *testing.T) {
	down, up := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{down, up})
	bd, _ := f.NewBackend(down, nil)
	var refused atomic.Int64
	bd.SetStreamAcceptor(pooled, func(peer.ID, protocol.ID) (network.StreamHandler, error) {
		refused.Add(1)
		return nil, fmt.Errorf("service unreachable")
	})
	var served atomic.Int64
	bu, _ := f.NewBackend(up, map[protocol.ID]network.StreamHandler{pooled: countingEcho(&served)})
	lbtest.WaitRegistered(t, bd, pooled)
	lbtest.WaitRegistered(t, bu, pooled)
	d := f.NewPeer()
	lbtest.WaitServed(t, d, f.Host.ID(), true, pooled)
	for i := 0; i < 6; i++ {
		openAndEcho(t, d, f.Host.ID(), pooled, testnet.RandomBytes(64<<10))
	}
	if served.Load() != 6 || refused.Load() == 0 {
		t.Fatalf("served %d of 6, refusals %d", served.Load(), refused.Load())
	}
}

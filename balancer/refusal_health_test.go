package balancer_test

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// resettingBackend registers proto for who and resets every forward stream
// the balancer offers it after reading the offer: a failure, not a
// refusal. It returns the number of offers.
func resettingBackend(t *testing.T, f *lbtest.Fixture, who lbtest.Identity, proto protocol.ID) *atomic.Int64 {
	t.Helper()
	h := testnet.NewHost(t, f.Transport, testnet.Options{Key: who.Key, LinkPeers: []peer.ID{f.Host.ID()}, NoListen: true})
	var offered atomic.Int64
	h.SetStreamHandler(wire.ForwardID, func(s network.Stream) {
		offered.Add(1)
		var req pb.Forward
		_ = wire.NewReader(s).ReadMsg(&req)
		s.Reset()
	})
	testnet.Connect(t, h, f.Host)
	if resp := lbtest.RawRequest(t, h, f.Host.ID(), &pb.RoutingRequest{Protocols: []string{string(proto)}, TtlSeconds: 60}); resp.Status != pb.Status_OK {
		t.Fatalf("resetting backend registers: %v", resp)
	}
	return &offered
}

// TestRefusalsDoNotEject (issue 11, item 8): a backend that refuses one
// unwelcome remote peer's streams (REJECTED from its acceptor) is not
// ejected however many streams that peer opens, and still serves everyone
// else first; its refusals do not hide failures either.
func TestRefusalsDoNotEject(t *testing.T) {
	picky, other := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{picky, other},
		balancer.WithHealth(balancer.Health{ConsecutiveFailures: 3, BaseEjection: time.Minute, MaxEjection: time.Minute}),
		balancer.WithPolicy(string(pooled), balancer.Policy{Strategy: balancer.RoundRobin}))
	banned := f.NewPeer()
	var refused, served atomic.Int64
	bp, _ := f.NewBackend(picky, nil)
	bp.SetStreamAcceptor(pooled, func(remote peer.ID, _ protocol.ID) (network.StreamHandler, error) {
		if remote == banned.ID() {
			refused.Add(1)
			return nil, errors.New("banned")
		}
		return countingEcho(&served), nil
	})
	var servedOther atomic.Int64
	bo, _ := f.NewBackend(other, map[protocol.ID]network.StreamHandler{pooled: countingEcho(&servedOther)})
	lbtest.WaitRegistered(t, bp, pooled)
	lbtest.WaitRegistered(t, bo, pooled)
	lbtest.WaitServed(t, banned, f.Host.ID(), true, pooled)

	for i := 0; i < 30; i++ {
		openAndEcho(t, banned, f.Host.ID(), pooled, []byte("x"))
	}
	for _, b := range f.LB.Backends() {
		if b.ID == picky.ID && time.Now().Before(b.EjectedUntil) {
			t.Fatalf("one remote peer's %d refused streams ejected the backend until %v", refused.Load(), b.EjectedUntil)
		}
	}
	if refused.Load() < 10 {
		t.Fatalf("the picky backend refused only %d of 30 streams: the test proves nothing", refused.Load())
	}
	d := f.NewPeer()
	for i := 0; i < 4; i++ {
		openAndEcho(t, d, f.Host.ID(), pooled, []byte("y"))
	}
	if served.Load() == 0 {
		t.Fatal("the picky backend served none of another peer's streams")
	}
}

// TestRefusalsDoNotHideFailures: refusals between failures neither eject
// nor reset the failure count, so a failing backend is still ejected.
func TestRefusalsDoNotHideFailures(t *testing.T) {
	flaky, other := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{flaky, other},
		balancer.WithHealth(balancer.Health{ConsecutiveFailures: 3, BaseEjection: time.Minute, MaxEjection: time.Minute}),
		balancer.WithPolicy(string(pooled), balancer.Policy{Strategy: balancer.RoundRobin}))
	// Offers alternate: a refusal, then a reset.
	h := testnet.NewHost(t, f.Transport, testnet.Options{Key: flaky.Key, LinkPeers: []peer.ID{f.Host.ID()}, NoListen: true})
	var offered atomic.Int64
	h.SetStreamHandler(wire.ForwardID, func(s network.Stream) {
		n := offered.Add(1)
		var req pb.Forward
		_ = wire.NewReader(s).ReadMsg(&req)
		if n%2 == 1 {
			wire.WriteFinal(s, &pb.ForwardResponse{Status: pb.Status_REJECTED, Text: "not you"})
			return
		}
		s.Reset()
	})
	testnet.Connect(t, h, f.Host)
	if resp := lbtest.RawRequest(t, h, f.Host.ID(), &pb.RoutingRequest{Protocols: []string{string(pooled)}, TtlSeconds: 60}); resp.Status != pb.Status_OK {
		t.Fatal(resp)
	}
	var servedOther atomic.Int64
	bo, _ := f.NewBackend(other, map[protocol.ID]network.StreamHandler{pooled: countingEcho(&servedOther)})
	lbtest.WaitRegistered(t, bo, pooled)
	d := f.NewPeer()
	lbtest.WaitServed(t, d, f.Host.ID(), true, pooled)
	ejected := func() bool {
		for _, b := range f.LB.Backends() {
			if b.ID == flaky.ID {
				return time.Now().Before(b.EjectedUntil)
			}
		}
		return false
	}
	for i := 0; i < 40 && !ejected(); i++ {
		openAndEcho(t, d, f.Host.ID(), pooled, []byte("x"))
	}
	if !ejected() {
		t.Fatalf("a backend that failed %d offers between refusals was not ejected", offered.Load()/2)
	}
}

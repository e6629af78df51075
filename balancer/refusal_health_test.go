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
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// resettingBackend registers proto for who and resets every forward stream
// the balancer offers it after reading the offer: a failure, not a
// refusal. It returns the number of offers.
func resettingBackend(t *testing.T, f *fixture, who identity, proto protocol.ID) *atomic.Int64 {
	t.Helper()
	h := testnet.NewHost(t, f.tr, testnet.Options{Key: who.key, LinkPeers: []peer.ID{f.host.ID()}, NoListen: true})
	var offered atomic.Int64
	h.SetStreamHandler(wire.ForwardID, func(s network.Stream) {
		offered.Add(1)
		var req pb.Forward
		_ = wire.NewReader(s).ReadMsg(&req)
		s.Reset()
	})
	testnet.Connect(t, h, f.host)
	if resp := rawRequest(t, h, f.host.ID(), &pb.RoutingRequest{Protocols: []string{string(proto)}, TtlSeconds: 60}); resp.Status != pb.Status_OK {
		t.Fatalf("resetting backend registers: %v", resp)
	}
	return &offered
}

// TestRefusalsDoNotEject (issue 11, item 8): a backend that refuses one
// unwelcome remote peer's streams (REJECTED from its acceptor) is not
// ejected however many streams that peer opens, and still serves everyone
// else first; its refusals do not hide failures either.
func TestRefusalsDoNotEject(t *testing.T) {
	picky, other := newIdentity(t), newIdentity(t)
	f := newFixture(t, testnet.TCP, []identity{picky, other},
		balancer.WithHealth(balancer.Health{ConsecutiveFailures: 3, BaseEjection: time.Minute, MaxEjection: time.Minute}),
		balancer.WithPolicy(string(pooled), balancer.Policy{Strategy: balancer.RoundRobin}))
	banned := f.newPeer()
	var refused, served atomic.Int64
	bp, _ := f.newBackend(picky, nil)
	bp.SetStreamAcceptor(pooled, func(remote peer.ID, _ protocol.ID) (network.StreamHandler, error) {
		if remote == banned.ID() {
			refused.Add(1)
			return nil, errors.New("banned")
		}
		return countingEcho(&served), nil
	})
	var servedOther atomic.Int64
	bo, _ := f.newBackend(other, map[protocol.ID]network.StreamHandler{pooled: countingEcho(&servedOther)})
	waitRegistered(t, bp, pooled)
	waitRegistered(t, bo, pooled)
	waitServed(t, banned, f.host.ID(), true, pooled)

	for i := 0; i < 30; i++ {
		openAndEcho(t, banned, f.host.ID(), pooled, []byte("x"))
	}
	for _, b := range f.lb.Backends() {
		if b.ID == picky.id && time.Now().Before(b.EjectedUntil) {
			t.Fatalf("one remote peer's %d refused streams ejected the backend until %v", refused.Load(), b.EjectedUntil)
		}
	}
	if refused.Load() < 10 {
		t.Fatalf("the picky backend refused only %d of 30 streams: the test proves nothing", refused.Load())
	}
	d := f.newPeer()
	for i := 0; i < 4; i++ {
		openAndEcho(t, d, f.host.ID(), pooled, []byte("y"))
	}
	if served.Load() == 0 {
		t.Fatal("the picky backend served none of another peer's streams")
	}
}

// TestRefusalsDoNotHideFailures: refusals between failures neither eject
// nor reset the failure count, so a failing backend is still ejected.
func TestRefusalsDoNotHideFailures(t *testing.T) {
	flaky, other := newIdentity(t), newIdentity(t)
	f := newFixture(t, testnet.TCP, []identity{flaky, other},
		balancer.WithHealth(balancer.Health{ConsecutiveFailures: 3, BaseEjection: time.Minute, MaxEjection: time.Minute}),
		balancer.WithPolicy(string(pooled), balancer.Policy{Strategy: balancer.RoundRobin}))
	// Offers alternate: a refusal, then a reset.
	h := testnet.NewHost(t, f.tr, testnet.Options{Key: flaky.key, LinkPeers: []peer.ID{f.host.ID()}, NoListen: true})
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
	testnet.Connect(t, h, f.host)
	if resp := rawRequest(t, h, f.host.ID(), &pb.RoutingRequest{Protocols: []string{string(pooled)}, TtlSeconds: 60}); resp.Status != pb.Status_OK {
		t.Fatal(resp)
	}
	var servedOther atomic.Int64
	bo, _ := f.newBackend(other, map[protocol.ID]network.StreamHandler{pooled: countingEcho(&servedOther)})
	waitRegistered(t, bo, pooled)
	d := f.newPeer()
	waitServed(t, d, f.host.ID(), true, pooled)
	ejected := func() bool {
		for _, b := range f.lb.Backends() {
			if b.ID == flaky.id {
				return time.Now().Before(b.EjectedUntil)
			}
		}
		return false
	}
	for i := 0; i < 40 && !ejected(); i++ {
		openAndEcho(t, d, f.host.ID(), pooled, []byte("x"))
	}
	if !ejected() {
		t.Fatalf("a backend that failed %d offers between refusals was not ejected", offered.Load()/2)
	}
}

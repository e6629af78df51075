package balancer_test

import (
	"errors"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// TestWeightIsCapped: a backend that claims weight 2^32-1 in a weighted
// pool is taken at wire.MaxWeight, so a backend of weight 1 still gets its
// share: one stream in every MaxWeight+1.
func TestWeightIsCapped(t *testing.T) {
	greedy, fair := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	const proto protocol.ID = "/test/weighted"
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{greedy, fair}, balancer.WithPolicy(string(proto), balancer.Policy{Strategy: balancer.Weighted}))
	var greedyN, fairN atomic.Int64
	// The greedy backend is a real backend (it must answer forward
	// streams) whose weight is then raised by a request of its own; with
	// no keepalive it does not re-send its weight during the test.
	be, gh := f.NewBackend(greedy, map[protocol.ID]network.StreamHandler{proto: countingEcho(&greedyN)}, backend.WithKeepalive(0), backend.WithTTL(600e9))
	lbtest.WaitRegistered(t, be, proto)
	fb, _ := f.NewBackend(fair, map[protocol.ID]network.StreamHandler{proto: countingEcho(&fairN)})
	lbtest.WaitRegistered(t, fb, proto)
	greedyWeight := func() uint32 {
		for _, r := range f.LB.Routes() {
			if r.Backend == greedy.ID {
				return r.Weight
			}
		}
		return 0
	}
	// The backend's own session may send its weight once more just after
	// connecting; claim the weight until it holds.
	testnet.Eventually(t, 10*time.Second, func() bool {
		if resp := lbtest.RawRequest(t, gh, f.Host.ID(), &pb.RoutingRequest{Protocols: []string{string(proto)}, TtlSeconds: 600, Weight: math.MaxUint32}); resp.Status != pb.Status_OK {
			t.Fatal(resp)
		}
		return greedyWeight() != 1
	}, "the greedy weight to hold")
	if w := greedyWeight(); w != wire.MaxWeight {
		t.Fatalf("the greedy backend's weight is %d, want it capped at %d", w, wire.MaxWeight)
	}
	d := f.NewPeer()
	lbtest.WaitServed(t, d, f.Host.ID(), true, proto)
	runStreams(t, f, []host.Host{d}, proto, wire.MaxWeight+1, 4)
	if w := greedyWeight(); w != wire.MaxWeight {
		t.Fatalf("the greedy backend re-registered with weight %d during the test", w)
	}
	if fairN.Load() != 1 || greedyN.Load() != wire.MaxWeight {
		t.Fatalf("of %d streams the weight-1 backend served %d and the greedy one %d; want 1 and %d",
			wire.MaxWeight+1, fairN.Load(), greedyN.Load(), wire.MaxWeight)
	}
	if b2, err := backend.New(gh, []peer.AddrInfo{f.Info()}, backend.WithWeight(wire.MaxWeight+1)); err == nil || !strings.Contains(err.Error(), "weight") {
		if b2 != nil {
			b2.Close()
		}
		t.Fatalf("backend.WithWeight(%d): err = %v, want a refusal", wire.MaxWeight+1, err)
	}
}

// TestRateBelowOneIsRefused: a per-peer rate between 0 and 1 would refuse
// every stream forever (the bucket never holds a whole token), so the
// option is refused; 1 is accepted.
func TestRateBelowOneIsRefused(t *testing.T) {
	for _, rate := range []float64{0.5, 0.999, -1, math.NaN(), math.Inf(1)} {
		err := balancer.CheckOptions(balancer.WithLimits(balancer.Limits{NewStreamsPerSecondPerPeer: rate}))
		var oe *balancer.OptionError
		if !errors.As(err, &oe) || oe.Setting != "new streams per second per peer" {
			t.Errorf("rate %v: err = %v, want a refusal naming the limit", rate, err)
		}
	}
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a}, balancer.WithLimits(balancer.Limits{NewStreamsPerSecondPerPeer: 1}))
	const proto protocol.ID = "/test/slow"
	be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{proto: testnet.Echo})
	lbtest.WaitRegistered(t, be, proto)
	d := f.NewPeer()
	lbtest.WaitServed(t, d, f.Host.ID(), true, proto)
	openAndEcho(t, d, f.Host.ID(), proto, []byte("one a second"))
}

package balancer_test

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// runStreams opens n streams on proto from d with `workers` at a time, each
// round-tripping its own payload, and fails the test on any error.
func runStreams(t *testing.T, f *lbtest.Fixture, d []host.Host, proto protocol.ID, n, workers int) {
	t.Helper()
	testnet.Workers(t, n, workers, func(i int) error {
		if err := f.EchoOnce(d[i%len(d)], proto, []byte(fmt.Sprintf("stream %d of %s", i, proto))); err != nil {
			return fmt.Errorf("stream %d: %w", i, err)
		}
		return nil
	})
}

// TestStrategiesSpread: 3,000 streams over a pool of three backends land
// within ±10% of even under least-streams and round robin, and in
// proportion to the weights under weighted.
func TestStrategiesSpread(t *testing.T) {
	const total = 3000
	cases := []struct {
		name    string
		policy  balancer.Policy
		weights []uint32
	}{
		{"least-streams", balancer.Policy{Strategy: balancer.LeastStreams}, []uint32{1, 1, 1}},
		{"round-robin", balancer.Policy{Strategy: balancer.RoundRobin}, []uint32{1, 1, 1}},
		{"random-of-two", balancer.Policy{Strategy: balancer.RandomOfTwo}, []uint32{1, 1, 1}},
		{"weighted", balancer.Policy{Strategy: balancer.Weighted}, []uint32{1, 2, 3}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ids := []lbtest.Identity{lbtest.NewIdentity(t), lbtest.NewIdentity(t), lbtest.NewIdentity(t)}
			f := lbtest.New(t, testnet.TCP, ids, balancer.WithPolicy("/test/*", c.policy))
			const proto protocol.ID = "/test/spread"
			counts := make([]atomic.Int64, len(ids))
			var sumW uint32
			for i, id := range ids {
				be, _ := f.NewBackend(id, map[protocol.ID]network.StreamHandler{proto: countingEcho(&counts[i])}, backend.WithWeight(c.weights[i]))
				lbtest.WaitRegistered(t, be, proto)
				sumW += c.weights[i]
			}
			d := f.NewPeer()
			lbtest.WaitServed(t, d, f.Host.ID(), true, proto)
			runStreams(t, f, []host.Host{d}, proto, total, 8)
			for i := range ids {
				want := float64(total) * float64(c.weights[i]) / float64(sumW)
				got := float64(counts[i].Load())
				if math.Abs(got-want) > 0.1*want {
					t.Errorf("backend %d (weight %d) served %v streams, want %v ±10%%", i, c.weights[i], got, want)
				}
			}
		})
	}
}

// TestSticky: with a sticky policy every stream of one remote peer goes to
// the same backend, and remote peers are spread over the pool.
func TestSticky(t *testing.T) {
	ids := []lbtest.Identity{lbtest.NewIdentity(t), lbtest.NewIdentity(t), lbtest.NewIdentity(t)}
	f := lbtest.New(t, testnet.TCP, ids, balancer.WithPolicy("/test/sticky", balancer.Policy{Sticky: true}))
	const proto protocol.ID = "/test/sticky"
	var mu sync.Mutex
	servedBy := map[peer.ID]map[int]int{} // remote peer -> backend -> streams
	for i, id := range ids {
		be, _ := f.NewBackend(id, map[protocol.ID]network.StreamHandler{proto: func(s network.Stream) {
			mu.Lock()
			r := s.Conn().RemotePeer()
			if servedBy[r] == nil {
				servedBy[r] = map[int]int{}
			}
			servedBy[r][i]++
			mu.Unlock()
			testnet.Echo(s)
		}})
		lbtest.WaitRegistered(t, be, proto)
	}
	var ds []host.Host
	for i := 0; i < 12; i++ {
		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, proto)
		ds = append(ds, d)
	}
	runStreams(t, f, ds, proto, 12*10, 4)
	used := map[int]bool{}
	for r, by := range servedBy {
		if len(by) != 1 {
			t.Errorf("remote peer %s was served by %d backends: %v", r, len(by), by)
		}
		for i := range by {
			used[i] = true
		}
	}
	if len(used) < 2 {
		t.Errorf("12 remote peers all went to one backend")
	}
}

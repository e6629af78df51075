package balancer_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// slowEcho echoes after a pause, so that streams are in flight when a
// backend drains.
func slowEcho(s network.Stream) {
	time.Sleep(20 * time.Millisecond) // simulated work, not synchronisation
	testnet.Echo(s)
}

// TestRollingRestart drains each backend of a pool of three in turn, under
// steady load, starting a replacement first: no stream is lost.
func TestRollingRestart(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		var ids []lbtest.Identity
		for i := 0; i < 6; i++ {
			ids = append(ids, lbtest.NewIdentity(t))
		}
		f := lbtest.New(t, tr, ids)
		start := func(i int) *backend.Backend {
			be, _ := f.NewBackend(ids[i], map[protocol.ID]network.StreamHandler{pooled: slowEcho})
			lbtest.WaitRegistered(t, be, pooled)
			return be
		}
		pool := []*backend.Backend{start(0), start(1), start(2)}
		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, pooled)

		stop := make(chan struct{})
		var wg sync.WaitGroup
		var ok, failed atomic.Int64
		var firstErr atomic.Value
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if err := f.EchoOnce(d, pooled, []byte(fmt.Sprintf("worker %d stream %d", w, i))); err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err)
					} else {
						ok.Add(1)
					}
				}
			}()
		}
		for i := range pool {
			replacement := start(3 + i)
			before := ok.Load()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := pool[i].Drain(ctx); err != nil {
				t.Errorf("drain backend %d: %v", i, err)
			}
			cancel()
			pool[i] = replacement
			testnet.Eventually(t, 10*time.Second, func() bool { return ok.Load() > before+20 }, "load goes on after drain %d", i)
		}
		close(stop)
		wg.Wait()
		if failed.Load() > 0 {
			t.Fatalf("%d of %d streams failed during the rolling restart; first: %v", failed.Load(), ok.Load()+failed.Load(), firstErr.Load())
		}
	})
}

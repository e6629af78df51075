package balancer_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// TestManyConcurrentStreams holds 500 forwarded streams open at once to one
// backend, over TCP and over QUIC. The backend answers none until all 500
// have arrived, so they are truly concurrent. Over QUIC this needs lanes:
// go-libp2p caps a QUIC connection at 256 concurrent streams per direction.
// The remote side is ten peers: the same QUIC cap applies to each of their
// connections to the balancer, and the default resource manager lets one
// remote peer open only about 64 inbound streams of one protocol.
func TestManyConcurrentStreams(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		const peers, perPeer = 10, 50
		const total = peers * perPeer
		a := lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{a})
		var mu sync.Mutex
		arrived := 0
		all := make(chan struct{})
		const proto protocol.ID = "/test/many"
		be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{proto: func(s network.Stream) {
			mu.Lock()
			arrived++
			if arrived == total {
				close(all)
			}
			mu.Unlock()
			select {
			case <-all:
				testnet.Echo(s)
			case <-time.After(60 * time.Second):
				s.Reset()
			}
		}})
		lbtest.WaitRegistered(t, be, proto)
		ds := make([]host.Host, peers)
		for i := range ds {
			ds[i] = f.NewPeer()
			lbtest.WaitServed(t, ds[i], f.Host.ID(), true, proto)
		}
		var wg sync.WaitGroup
		errs := make(chan error, total)
		for i := 0; i < total; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- f.EchoOnce(ds[i%peers], proto, []byte(fmt.Sprintf("stream %d", i)))
			}()
		}
		wg.Wait()
		close(errs)
		failed := 0
		var first error
		for err := range errs {
			if err != nil {
				failed++
				first = err
			}
		}
		if failed > 0 {
			mu.Lock()
			t.Fatalf("%d of %d streams failed (%d reached the backend); one error: %v", failed, total, arrived, first)
		}
	})
}

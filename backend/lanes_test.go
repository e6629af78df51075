package backend_test

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
// go-libp2p caps a QUIC connection at 256 concurrent streams per direction,
// so the backend opens more connections from its peer ID, and closes them
// with the Backend. Over TCP (yamux, no fixed cap) the one connection
// carries them all. The remote side is ten peers: the same QUIC cap applies
// to each of their connections to the balancer, and the default resource
// manager lets one remote peer open only about 64 inbound streams of one
// protocol.
func TestManyConcurrentStreams(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		const peers, perPeer = 10, 50
		const total = peers * perPeer
		a := lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{a})
		var mu sync.Mutex
		arrived, conns := 0, 0
		all := make(chan struct{})
		const proto protocol.ID = "/test/many"
		be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{proto: func(s network.Stream) {
			mu.Lock()
			if arrived++; arrived == total {
				conns = len(f.Host.Network().ConnsToPeer(a.ID))
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
		for i := range total {
			wg.Go(func() { errs <- f.EchoOnce(ds[i%peers], proto, []byte(fmt.Sprintf("stream %d", i))) })
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

		switch tr {
		case testnet.QUIC:
			if conns < 2 {
				t.Fatalf("the balancer had %d connection(s) to the backend with %d streams held, want lanes (2 or more)", conns, total)
			}
			if err := be.Close(); err != nil {
				t.Fatal(err)
			}
			testnet.Eventually(t, 10*time.Second, func() bool { return len(f.Host.Network().ConnsToPeer(a.ID)) == 1 },
				"the lanes to close, leaving the backend host's connection")
		case testnet.TCP:
			if conns != 1 {
				t.Fatalf("the balancer had %d connections to the backend over TCP, want 1 (no lanes)", conns)
			}
		}
	})
}

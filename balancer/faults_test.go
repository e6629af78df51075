package balancer_test

import (
	"context"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// TestBackendKilledMidStream: when a backend dies with a stream in flight,
// the remote peer's stream is reset within a second, the backend's routes
// are suspended, and another backend's stream goes on untouched.
func TestBackendKilledMidStream(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		doomed, other := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{doomed, other})
		arrived := make(chan struct{}, 1)
		hold := func(s network.Stream) {
			arrived <- struct{}{}
			io.Copy(io.Discard, s) // reads until the stream dies
		}
		bd, dh := f.NewBackend(doomed, map[protocol.ID]network.StreamHandler{"/doomed": hold})
		bo, _ := f.NewBackend(other, map[protocol.ID]network.StreamHandler{"/other": testnet.Echo})
		lbtest.WaitRegistered(t, bd, "/doomed")
		lbtest.WaitRegistered(t, bo, "/other")
		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, "/doomed", "/other")

		victim, err := d.NewStream(context.Background(), f.Host.ID(), "/doomed")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := victim.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		<-arrived
		bystander, err := d.NewStream(context.Background(), f.Host.ID(), "/other")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bystander.Write([]byte("first half, ")); err != nil {
			t.Fatal(err)
		}

		killed := time.Now()
		dh.Close()
		_ = victim.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = victim.Read(make([]byte, 1))
		if err == nil || isTimeout(err) {
			t.Fatalf("the remote peer's stream was not reset: %v", err)
		}
		if took := time.Since(killed); took > time.Second {
			t.Fatalf("the remote peer's stream was reset after %v, want within 1 s", took)
		}
		lbtest.WaitServed(t, d, f.Host.ID(), false, "/doomed")

		if _, err := bystander.Write([]byte("second half")); err != nil {
			t.Fatalf("the other backend's stream was touched: %v", err)
		}
		_ = bystander.CloseWrite()
		_ = bystander.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(bystander)
		if err != nil || string(got) != "first half, second half" {
			t.Fatalf("the other backend's stream: %q, %v", got, err)
		}
	})
}

// TestBalancerRestart: a balancer restarted with the same identity and
// address gets every backend registered again within a few seconds,
// without operator action, and new streams flow.
func TestBalancerRestart(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a := lbtest.NewIdentity(t)
		lbKey := lbtest.NewIdentity(t)
		first := testnet.NewHost(t, tr, testnet.Options{Key: lbKey.Key, LinkPeers: []peer.ID{a.ID}})
		addrs := first.Addrs()
		lb1, err := balancer.New(first, balancer.WithAllow(a.ID))
		if err != nil {
			t.Fatal(err)
		}
		f := &lbtest.Fixture{T: t, Transport: tr, Host: first, LB: lb1}
		be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{"/svc": testnet.Echo})
		lbtest.WaitRegistered(t, be, "/svc")

		lb1.Close()
		first.Close()
		var listen []string
		for _, a := range addrs {
			listen = append(listen, a.String())
		}
		second := testnet.NewHost(t, tr, testnet.Options{Key: lbKey.Key, LinkPeers: []peer.ID{a.ID},
			Extra: []libp2p.Option{libp2p.ListenAddrStrings(listen...)}})
		lb2, err := balancer.New(second, balancer.WithAllow(a.ID))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lb2.Close() })
		restarted := time.Now()
		testnet.Eventually(t, 5*time.Second, func() bool { return len(lb2.Routes()) == 1 }, "backend registered with the restarted balancer")
		t.Logf("registered again %v after the restart", time.Since(restarted))
		f2 := &lbtest.Fixture{T: t, Transport: tr, Host: second, LB: lb2}
		d := f2.NewPeer()
		lbtest.WaitServed(t, d, second.ID(), true, "/svc")
		openAndEcho(t, d, second.ID(), "/svc", []byte("after the restart"))
	})
}

// TestSlowReader: a remote peer that stops reading holds back the backend
// through flow control, the balancer does not buffer without bound, and
// other streams go on.
func TestSlowReader(t *testing.T) {
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a})
	written := make(chan int64, 1)
	firehose := func(s network.Stream) {
		// Writes as fast as the stream takes, until it blocks for good.
		buf := make([]byte, 64<<10)
		var n int64
		for {
			_ = s.SetWriteDeadline(time.Now().Add(time.Second))
			m, err := s.Write(buf)
			n += int64(m)
			if err != nil {
				break
			}
		}
		written <- n
		s.Reset()
	}
	be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{"/firehose": firehose, "/echo": testnet.Echo})
	lbtest.WaitRegistered(t, be, "/firehose", "/echo")
	d := f.NewPeer()
	lbtest.WaitServed(t, d, f.Host.ID(), true, "/firehose", "/echo")

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s, err := d.NewStream(context.Background(), f.Host.ID(), "/firehose")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	if _, err := s.Write([]byte("go")); err != nil { // never read from s again
		t.Fatal(err)
	}
	// Meanwhile another stream is served.
	openAndEcho(t, d, f.Host.ID(), "/echo", []byte("not stalled"))
	n := <-written
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	// Everything in flight sits in flow-control windows: yamux's (16 MiB at
	// most per stream) on each hop, and one copy buffer.
	if n > 64<<20 {
		t.Fatalf("the backend could write %d MiB to a peer that reads nothing", n>>20)
	}
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 96<<20 {
		t.Fatalf("heap grew by %d MiB holding a stalled stream", grew>>20)
	}
	t.Logf("backend wrote %d KiB before back-pressure stopped it", n>>10)
}

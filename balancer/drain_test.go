package balancer_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/metrics"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
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

// drainingCounter counts the registrations answered DRAINING.
type drainingCounter struct {
	balancer.Tracer // the rest: none
	n               atomic.Int64
}

func (c *drainingCounter) RegistrationHandled(_ peer.ID, st pb.Status) {
	if st == pb.Status_DRAINING {
		c.n.Add(1)
	}
}

// TestShutdownAnswersDraining: while the balancer drains, a backend's
// registrations get DRAINING, again and again (its keepalive and back-off
// are short here),
// and it keeps the connection that carries a stream in flight, which
// finishes whole (issue 14: a vanished routing-request protocol counted as
// silence, and two of them made the backend drop its connections).
func TestShutdownAnswersDraining(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a := lbtest.NewIdentity(t)
		counter := &drainingCounter{Tracer: metrics.Tee()}
		f := lbtest.New(t, tr, []lbtest.Identity{a}, balancer.WithTracer(counter))
		be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{pooled: func(s network.Stream) {
			defer s.Close()
			_, _ = io.Copy(s, s) // echo as it reads
		}}, backend.WithBackoff(10*time.Millisecond, 40*time.Millisecond), backend.WithKeepalive(200*time.Millisecond))
		lbtest.WaitRegistered(t, be, pooled)
		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, pooled)
		s, err := d.NewStream(context.Background(), f.Host.ID(), pooled)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetDeadline(time.Now().Add(30 * time.Second))
		r := bufio.NewReader(s)
		line := func(want string) {
			t.Helper()
			if _, err := io.WriteString(s, want); err != nil {
				t.Fatalf("writing %q: %v", want, err)
			}
			if got, err := r.ReadString('\n'); got != want {
				t.Fatalf("read %q (%v), want %q", got, err, want)
			}
		}
		line("first\n")

		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done <- f.LB.Shutdown(ctx)
		}()
		testnet.Eventually(t, 10*time.Second, func() bool { return counter.n.Load() >= 5 },
			"five registrations answered DRAINING")
		st := be.Status()[0]
		if !errors.Is(st.LastError, &wire.StatusError{Status: pb.Status_DRAINING}) || len(st.Protocols) != 0 || !st.Connected {
			t.Fatalf("backend status while the balancer drains: %+v; want connected, no routes, DRAINING", st)
		}
		line("second\n")
		if err := s.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
			t.Fatalf("end of the stream: %q, %v", rest, err)
		}
		if err := <-done; err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	})
}

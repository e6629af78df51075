package balancer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// TestEjectionAndReturn: a backend that fails its handshakes is ejected
// after three failures in a row, is not offered streams while ejected, and
// is offered streams again when the ejection ends.
func TestEjectionAndReturn(t *testing.T) {
	good, bad := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{good, bad},
		balancer.WithHealth(balancer.Health{ConsecutiveFailures: 3, BaseEjection: 3 * time.Second, MaxEjection: 10 * time.Second}))
	offered := resettingBackend(t, f, bad, pooled)
	var served atomic.Int64
	be, _ := f.NewBackend(good, map[protocol.ID]network.StreamHandler{pooled: countingEcho(&served)})
	lbtest.WaitRegistered(t, be, pooled)
	d := f.NewPeer()
	lbtest.WaitServed(t, d, f.Host.ID(), true, pooled)

	// Streams until the bad backend has failed three times.
	for offered.Load() < 3 {
		openAndEcho(t, d, f.Host.ID(), pooled, []byte("x"))
	}
	ejectedAt := time.Now()
	before := offered.Load()
	for i := 0; i < 20; i++ {
		openAndEcho(t, d, f.Host.ID(), pooled, []byte("y"))
	}
	if took := time.Since(ejectedAt); took >= 3*time.Second {
		t.Fatalf("20 streams took %v, longer than the ejection: cannot tell", took)
	}
	if offered.Load() != before {
		t.Fatalf("an ejected backend was offered %d streams", offered.Load()-before)
	}
	// After the ejection it is tried again.
	testnet.Eventually(t, 10*time.Second, func() bool {
		openAndEcho(t, d, f.Host.ID(), pooled, []byte("z"))
		return offered.Load() > before
	}, "ejected backend offered a stream again")
}

// TestFailoverEveryByte: in a pool where one backend refuses, one hangs past
// the handshake deadline and one is disconnected mid-run, every stream's
// bytes arrive intact; only streams that the killed backend had already
// accepted are reset, and they succeed when opened again.
func TestFailoverEveryByte(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		good, refusing, hanging, doomed := lbtest.NewIdentity(t), lbtest.NewIdentity(t), lbtest.NewIdentity(t), lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{good, refusing, hanging, doomed}, balancer.WithHandshakeTimeout(200*time.Millisecond))
		scriptedBackend(t, f, refusing, pooled, &pb.ForwardResponse{Status: pb.Status_REJECTED})
		scriptedBackend(t, f, hanging, pooled, nil)
		var servedGood, servedDoomed atomic.Int64
		bg, _ := f.NewBackend(good, map[protocol.ID]network.StreamHandler{pooled: countingEcho(&servedGood)})
		bd, dh := f.NewBackend(doomed, map[protocol.ID]network.StreamHandler{pooled: countingEcho(&servedDoomed)})
		lbtest.WaitRegistered(t, bg, pooled)
		lbtest.WaitRegistered(t, bd, pooled)
		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, pooled)

		const n, workers = 200, 4
		var done, retries atomic.Int64
		var kill sync.Once
		testnet.Workers(t, n, workers, func(i int) error {
			if i == n/2 {
				kill.Do(func() { dh.Close() })
			}
			payload := []byte(fmt.Sprintf("%d:%s", i, make([]byte, 4096)))
			err := f.EchoOnce(d, pooled, payload)
			if err != nil {
				var se *network.StreamError
				if !errors.As(err, &se) {
					return fmt.Errorf("stream %d: %w", i, err)
				}
				retries.Add(1)
				if err = f.EchoOnce(d, pooled, payload); err != nil {
					return fmt.Errorf("stream %d, opened again: %w", i, err)
				}
			}
			done.Add(1)
			return nil
		})
		if done.Load() != n {
			t.Fatalf("%d of %d streams verified", done.Load(), n)
		}
		if retries.Load() > workers {
			t.Fatalf("%d streams were reset; at most the %d in flight when the backend died may be", retries.Load(), workers)
		}
		if servedDoomed.Load() == 0 {
			t.Fatal("the doomed backend served nothing before it died")
		}
	})
}

// TestHangingHandshakeCut: a backend that never answers holds a stream
// only until the handshake deadline.
func TestHangingHandshakeCut(t *testing.T) {
	hanging := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{hanging}, balancer.WithHandshakeTimeout(300*time.Millisecond))
	scriptedBackend(t, f, hanging, pooled, nil)
	d := f.NewPeer()
	lbtest.WaitServed(t, d, f.Host.ID(), true, pooled)
	start := time.Now()
	err := f.EchoOnce(d, pooled, []byte("x"))
	if err == nil {
		t.Fatal("a stream to a backend that never answers succeeded")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the stream was cut after %v, not at the 300 ms handshake deadline", took)
	}
	var ctxErr error = context.DeadlineExceeded
	if errors.Is(err, ctxErr) {
		t.Fatalf("the client timed out instead of seeing a reset: %v", err)
	}
}

// TestBurstOfFailuresEjectsOnce: offers in flight together that fail
// together (a backend that hangs, or whose connection drops, with many
// streams in their handshake) eject the backend once. Before, every few of
// them ejected it again, each time for longer: a dropped link with a few
// hundred offers in flight ejected a backend for the 5-minute maximum within
// a second (seen in bench -serve over QUIC).
func TestBurstOfFailuresEjectsOnce(t *testing.T) {
	hanging, good := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{hanging, good},
		balancer.WithHandshakeTimeout(3*time.Second),
		balancer.WithHealth(balancer.Health{ConsecutiveFailures: 3, BaseEjection: 2 * time.Second, MaxEjection: time.Minute}))
	offered := scriptedBackend(t, f, hanging, pooled, nil)
	d := f.NewPeer()
	lbtest.WaitServed(t, d, f.Host.ID(), true, pooled)

	// Twelve offers at once, all to the hanging backend, the only one yet.
	const burst = 12
	errs := make(chan error, burst)
	for range burst {
		go func() { errs <- f.EchoOnce(d, pooled, []byte("x")) }()
	}
	testnet.Eventually(t, 10*time.Second, func() bool { return offered.Load() == burst }, "%d offers at the hanging backend", burst)
	var served atomic.Int64
	be, _ := f.NewBackend(good, map[protocol.ID]network.StreamHandler{pooled: countingEcho(&served)})
	lbtest.WaitRegistered(t, be, pooled)
	for range burst {
		<-errs // timed out together, then failed over or not
	}
	// One ejection lasts 2 s; twelve failures counted as four would make
	// the fourth last 8 s.
	testnet.Eventually(t, 6*time.Second, func() bool {
		openAndEcho(t, d, f.Host.ID(), pooled, []byte("z"))
		return offered.Load() > burst
	}, "the hanging backend offered a stream again after one ejection")
}

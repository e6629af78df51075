package backend_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

const drained protocol.ID = "/test/drain"

// streamingEcho echoes as it reads, so that a test can hold a stream open
// and see each part come back.
func streamingEcho(s network.Stream) {
	defer s.Close()
	if _, err := io.Copy(s, s); err != nil {
		s.Reset()
	}
}

// openInFlight opens drained from d through the balancer and has first
// echoed back, so that the stream is in flight.
func openInFlight(t *testing.T, f *lbtest.Fixture, d host.Host, first string) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.NewStream(ctx, f.Host.ID(), drained)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Reset() })
	_ = s.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(s, first); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(first))
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != first {
		t.Fatalf("echo of %q: %q, %v", first, buf, err)
	}
	return s
}

// TestDrainFinishesStreamsInFlight: Drain releases the backend's routes at
// once, waits while a forwarded stream is still open (both halves of it
// keep working), returns nil once the stream has ended, and closes the
// Backend.
func TestDrainFinishesStreamsInFlight(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a := lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{a})
		be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{drained: streamingEcho})
		lbtest.WaitRegistered(t, be, drained)
		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, drained)
		s := openInFlight(t, f, d, "part one\n")
		if n := be.StreamsInFlight(); n != 1 {
			t.Fatalf("StreamsInFlight = %d with one stream open, want 1", n)
		}

		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			done <- be.Drain(ctx)
		}()
		// The route goes at once, while the stream is still open.
		lbtest.WaitServed(t, d, f.Host.ID(), false, drained)
		select {
		case err := <-done:
			t.Fatalf("Drain returned (%v) with a stream in flight", err)
		default:
		}

		if _, err := io.WriteString(s, "part two\n"); err != nil {
			t.Fatal(err)
		}
		if err := s.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		rest, err := io.ReadAll(s)
		if err != nil || string(rest) != "part two\n" {
			t.Fatalf("after Drain began: read %q, %v", rest, err)
		}
		s.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Drain: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("Drain did not return after the stream ended")
		}
		if err := be.Close(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Close after Drain = %v, want net.ErrClosed (Drain closes the Backend)", err)
		}
	})
}

// TestDrainTimeout: a stream still open when Drain's context ends makes
// Drain return the context's error; the Backend is closed all the same.
func TestDrainTimeout(t *testing.T) {
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a})
	be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{drained: streamingEcho})
	lbtest.WaitRegistered(t, be, drained)
	d := f.NewPeer()
	lbtest.WaitServed(t, d, f.Host.ID(), true, drained)
	openInFlight(t, f, d, "held\n")

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := be.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain with a stream held open = %v, want context.DeadlineExceeded", err)
	}
	if err := be.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Close after Drain = %v, want net.ErrClosed", err)
	}
}

package balancer_test

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// TestCloseResetsLateHandshake: a forward handshake that completes after
// Close (the backend answers only once Close has returned) must end with
// both streams reset, not with a pipe that nothing would ever reset. Close
// does not cut a handshake in flight (it is bounded by the handshake
// timeout); before pipe.Group refused pairs after Close, such a stream was
// carried on after Close had returned.
func TestCloseResetsLateHandshake(t *testing.T) {
	const late protocol.ID = "/test/late/1.0.0"
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		id := lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{id})
		be, _ := f.NewBackend(id, nil)
		entered := make(chan struct{}, 1)
		release := make(chan struct{})
		handled := make(chan error, 1)
		be.SetStreamAcceptor(late, func(peer.ID, protocol.ID) (network.StreamHandler, error) {
			entered <- struct{}{}
			<-release
			return func(s network.Stream) {
				_ = s.SetDeadline(time.Now().Add(10 * time.Second))
				data, err := io.ReadAll(s)
				if err == nil {
					_, err = s.Write(data)
				}
				handled <- err
				s.Close()
			}, nil
		})
		lbtest.WaitRegistered(t, be, late)
		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, late)

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := d.NewStream(ctx, f.Host.ID(), late)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Reset()
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := s.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if err := s.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-entered:
		case <-ctx.Done():
			t.Fatal("the backend was never offered the stream")
		}
		if err := f.LB.Close(); err != nil {
			t.Fatal(err)
		}
		close(release)

		got, err := io.ReadAll(s)
		if err == nil {
			t.Fatalf("the remote peer's stream was carried after Close (read %q); want a reset", got)
		}
		select {
		case err := <-handled:
			if err == nil {
				t.Fatal("the backend's stream was carried after Close; want a reset")
			}
		case <-ctx.Done():
			t.Fatal("the backend's handler never ran")
		}
		testnet.Eventually(t, 5*time.Second, func() bool { return f.LB.ActiveStreams() == 0 }, "no stream in flight after Close")
	})
}

// TestDrainWaitsForStreams: Drain returns when the last forwarded stream
// ends, woken by that end (no poll), and a stream that was reset counts as
// ended even if its handler never closes it.
func TestDrainWaitsForStreams(t *testing.T) {
	const held protocol.ID = "/test/held/1.0.0"
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		id := lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{id})
		streams := make(chan network.Stream, 2)
		be, _ := f.NewBackend(id, map[protocol.ID]network.StreamHandler{
			// Keeps the stream open after returning, as a handler that
			// hands it to another goroutine does.
			held: func(s network.Stream) { streams <- s },
		})
		lbtest.WaitRegistered(t, be, held)
		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, held)

		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		open := func() (client, backendSide network.Stream) {
			t.Helper()
			s, err := d.NewStream(ctx, f.Host.ID(), held)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Reset() })
			if _, err := s.Write([]byte{1}); err != nil {
				t.Fatal(err)
			}
			select {
			case bs := <-streams:
				_ = bs.SetDeadline(time.Now().Add(20 * time.Second))
				return s, bs
			case <-ctx.Done():
				t.Fatal("no stream reached the backend")
				return nil, nil
			}
		}
		_, closedLater := open()
		resetClient, careless := open()
		// The careless handler reads until the stream fails and then drops
		// it without Close or Reset.
		go func() { _, _ = io.Copy(io.Discard, careless) }()
		if n := be.StreamsInFlight(); n != 2 {
			t.Fatalf("StreamsInFlight = %d with two streams held, want 2", n)
		}

		var ended atomic.Bool
		drained := make(chan error, 1)
		go func() {
			err := be.Drain(ctx)
			if err == nil && !ended.Load() {
				err = errors.New("Drain returned while a stream was open")
			}
			drained <- err
		}()
		resetClient.Reset()
		testnet.Eventually(t, 10*time.Second, func() bool { return be.StreamsInFlight() == 1 },
			"a reset stream whose handler dropped it no longer counts")
		ended.Store(true)
		if err := closedLater.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-drained:
			if err != nil {
				t.Fatalf("Drain: %v", err)
			}
		case <-ctx.Done():
			t.Fatal("Drain did not return after the last stream ended")
		}
	})
}

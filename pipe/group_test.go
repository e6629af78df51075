package pipe_test

import (
	"context"
	"errors"
	"io"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/libp2p-balancer/libp2p-balancer/pipe"
)

// groupJoin forwards through g.Join, so the chain's pairs are g's members.
func groupJoin(g *pipe.Group) forwarder {
	return func(a, b network.Stream) pipe.Result { return g.Join(a, b, nil) }
}

// waitErr runs Wait on a goroutine and returns its result channel.
func waitErr(g *pipe.Group, ctx context.Context) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- g.Wait(ctx) }()
	return errc
}

func TestGroupWaitsForPairs(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			var g pipe.Group
			if err := g.Wait(context.Background()); err != nil {
				t.Fatalf("Wait on an empty group: %v", err)
			}
			c := newChain(t, tr, groupJoin(&g))
			a, b := c.openEstablished(t)
			if n := g.Len(); n != 1 {
				t.Fatalf("Len = %d with one pair joined, want 1", n)
			}
			done, cancel := context.WithCancel(context.Background())
			cancel()
			if err := g.Wait(done); !errors.Is(err, context.Canceled) {
				t.Fatalf("Wait with a pair in flight and ctx done = %v, want context.Canceled", err)
			}

			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			waited := waitErr(&g, ctx)
			select {
			case err := <-waited:
				t.Fatalf("Wait returned %v with a pair in flight", err)
			default:
			}
			// End the pair cleanly both ways.
			for _, s := range []network.Stream{a, b} {
				if err := s.CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range []network.Stream{a, b} {
				if _, err := io.ReadAll(s); err != nil {
					t.Fatal(err)
				}
			}
			if err := <-waited; err != nil {
				t.Fatalf("Wait after the pair ended: %v", err)
			}
			if res := c.result(t); res.Err != nil {
				t.Fatalf("Join: %v", res.Err)
			}
			if n := g.Len(); n != 0 {
				t.Fatalf("Len = %d after the pair ended, want 0", n)
			}
		})
	}
}

func TestGroupCloseRefuses(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			var g pipe.Group
			c := newChain(t, tr, groupJoin(&g))
			a1, b1 := c.openEstablished(t)
			g.Close()
			g.Close() // a second Close is harmless

			// A pair joined after Close is reset, not run.
			a2 := c.open(t)
			mustWrite(t, a2, []byte{'>'})
			if res := c.result(t); !errors.Is(res.Err, pipe.ErrClosed) {
				t.Fatalf("Join after Close: %v, want ErrClosed", res.Err)
			}
			readErr(t, a2)
			if n := g.Len(); n != 1 {
				t.Fatalf("Len = %d, want 1: a refused pair must not count", n)
			}

			// The pair joined before Close goes on until ResetAll.
			mustWrite(t, a1, []byte{'x'})
			mustReadByte(t, b1, 'x')
			g.ResetAll()
			if err := readErr(t, a1); !errors.Is(err, network.ErrReset) {
				t.Fatalf("A after ResetAll: %v, want a reset", err)
			}
			if err := readErr(t, b1); !errors.Is(err, network.ErrReset) {
				t.Fatalf("B after ResetAll: %v, want a reset", err)
			}
			if res := c.result(t); res.Err == nil {
				t.Fatal("Join of a reset pair ended without an error")
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			if err := g.Wait(ctx); err != nil {
				t.Fatalf("Wait after ResetAll: %v", err)
			}
		})
	}
}

func TestGroupStartAfterClose(t *testing.T) {
	var g pipe.Group
	g.Close()
	c := newChain(t, transports[0], func(a, b network.Stream) pipe.Result {
		var got pipe.Result
		called := false
		g.Start(a, b, nil, func(res pipe.Result) { got, called = res, true })
		if !called {
			t.Error("Start after Close did not call done at once")
		}
		return got
	})
	a := c.open(t)
	mustWrite(t, a, []byte{'>'})
	if res := c.result(t); !errors.Is(res.Err, pipe.ErrClosed) {
		t.Fatalf("Start after Close: %v, want ErrClosed", res.Err)
	}
	readErr(t, a)
}

// TestGroupAddRemove covers members an owner tracks itself, as a backend
// does with the streams it hands to handlers.
func TestGroupAddRemove(t *testing.T) {
	var g pipe.Group
	c := newChain(t, transports[0], joinWith(nil))
	a, b := c.openEstablished(t)
	if !g.Add(a, nil) {
		t.Fatal("Add refused on an open group")
	}
	if !g.Add(b, nil) {
		t.Fatal("Add refused on an open group")
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	waited := waitErr(&g, ctx)
	g.Remove(a)
	g.Remove(a) // again: nothing happens
	select {
	case err := <-waited:
		t.Fatalf("Wait returned %v with a member left", err)
	default:
	}
	if n := g.Len(); n != 1 {
		t.Fatalf("Len = %d, want 1", n)
	}
	g.Close()
	if g.Add(a, nil) {
		t.Fatal("Add accepted after Close")
	}
	g.ResetAll() // resets b, the single-stream member
	if err := readErr(t, a); !errors.Is(err, network.ErrReset) {
		t.Fatalf("A after ResetAll of B's end: %v, want a reset", err)
	}
	g.Remove(b)
	if err := <-waited; err != nil {
		t.Fatalf("Wait after the last Remove: %v", err)
	}
}

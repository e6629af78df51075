package pipe

import (
	"context"
	"errors"
	"sync"
)

// ErrClosed is the Result error of a Group's Start or Join after Close: the
// streams were reset, not joined.
var ErrClosed = errors.New("pipe: group closed")

// Group tracks the streams in flight of one owner (a balancer, a backend, a
// sidecar) so that its shutdown can wait for them, refuse new ones and reset
// what is left. The zero value is ready to use.
//
// A member is a pair of streams joined by Start or Join, or one or two
// streams tracked with Add and Remove by an owner that does not copy them
// itself (a backend hands its streams to the user's handlers).
//
// Close refuses later members; ResetAll resets the members in flight. Close
// then ResetAll leaves nothing running: a member added before Close is reset,
// and one added after is refused. (Before Group, the balancer's tracker had
// no Close, so a handshake that completed between its reset and the end of
// Balancer.Close started a pipe that nothing reset.)
type Group struct {
	mu     sync.Mutex
	closed bool
	// members maps each member's first stream to its second (nil for a
	// single stream).
	members map[Stream]Stream
	// idle is closed the next time members becomes empty; it exists only
	// while a Wait needs it, so that adding and removing cost no
	// allocation beyond the map entry.
	idle chan struct{}
}

// Add tracks a and b (b may be nil) until Remove(a), and reports whether it
// did: after Close it does nothing and returns false, and the caller resets
// the streams itself. a must not be in the group already, and must be
// comparable (a pointer, as every go-libp2p stream is).
func (g *Group) Add(a, b Stream) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	if g.members == nil {
		g.members = map[Stream]Stream{}
	}
	g.members[a] = b
	return true
}

// Remove stops tracking the member whose first stream is a. Removing one
// that is not tracked (again, or never added) does nothing, so an owner may
// call it from every path that ends a stream.
func (g *Group) Remove(a Stream) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.members[a]; !ok {
		return
	}
	delete(g.members, a)
	if len(g.members) == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// Len returns the number of members in flight.
func (g *Group) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.members)
}

// Wait returns nil once the group has been empty at some moment since the
// call, or ctx's error when ctx is done first. It waits on an event, not by
// polling. Without Close, members may be added again right after it returns.
func (g *Group) Wait(ctx context.Context) error {
	g.mu.Lock()
	if len(g.members) == 0 {
		g.mu.Unlock()
		return nil
	}
	if g.idle == nil {
		g.idle = make(chan struct{})
	}
	idle := g.idle
	g.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close makes every later Add, Start and Join refuse; members already in
// flight go on (ResetAll ends them). It may be called more than once.
func (g *Group) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// ResetAll resets both streams of every member in flight. The members leave
// the group when their owners see the reset and Remove them (Start and Join
// do so themselves).
func (g *Group) ResetAll() {
	g.mu.Lock()
	streams := make([]Stream, 0, 2*len(g.members))
	for a, b := range g.members {
		streams = append(streams, a)
		if b != nil {
			streams = append(streams, b)
		}
	}
	g.mu.Unlock()
	for _, s := range streams {
		_ = s.Reset()
	}
}

// Start is the package's Start with the pair tracked by g while it runs: it
// is added before the copy starts and removed once done has returned, so
// that when Len is 0 or Wait returns, the callers' cleanup has run too. After
// Close it resets a and b and calls done at once, on the caller's
// goroutine, with Result{Err: ErrClosed}, so that the caller's cleanup runs
// the same way for a refused pair as for one that ran.
func (g *Group) Start(a, b Stream, cfg *Config, done func(Result)) {
	if !g.Add(a, b) {
		_ = a.Reset()
		_ = b.Reset()
		if done != nil {
			done(Result{Err: ErrClosed})
		}
		return
	}
	Start(a, b, cfg, func(res Result) {
		defer g.Remove(a)
		if done != nil {
			done(res)
		}
	})
}

// Join is the package's Join with the pair tracked by g while it runs.
// After Close it resets a and b and returns Result{Err: ErrClosed}.
func (g *Group) Join(a, b Stream, cfg *Config) Result {
	if !g.Add(a, b) {
		_ = a.Reset()
		_ = b.Reset()
		return Result{Err: ErrClosed}
	}
	defer g.Remove(a)
	return Join(a, b, cfg)
}

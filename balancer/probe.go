package balancer

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"

	"github.com/libp2p-balancer/libp2p-balancer/internal/link"
)

// probeBackends pings every connected backend with routes each probe
// interval, and disconnects one that does not answer in time, which
// suspends its routes (watchConnectedness). It runs on its own goroutine,
// owned by the Balancer; each round's pings run concurrently and the round
// waits for them, so no ping outlives Close. The interval is read each
// round, and Update wakes a wait so that a new interval (or probing turned
// on or off) applies at once.
func (b *Balancer) probeBackends() {
	defer b.wg.Done()
	t := time.NewTimer(0)
	t.Stop()
	defer t.Stop()
	for {
		interval := b.settings().probeInterval
		var tick <-chan time.Time // nil while probing is off
		if interval > 0 {
			t.Reset(interval)
			tick = t.C
		}
		select {
		case <-b.ctx.Done():
			return
		case <-b.reconfigured:
			t.Stop()
			continue
		case <-tick:
		}
		b.mu.Lock()
		var targets []peer.ID
		for id, be := range b.backends {
			if be.connected && len(be.routes) > 0 {
				targets = append(targets, id)
			}
		}
		b.mu.Unlock()
		done := make(chan struct{}, len(targets))
		for _, p := range targets {
			go func() {
				defer func() { done <- struct{}{} }()
				b.probe(p, interval)
			}()
		}
		for range targets {
			<-done
		}
	}
}

// probe pings backend p once and disconnects it when no answer of any kind
// comes within timeout.
//
// The ping stream is opened the way forwarded streams are, on the link
// connection with the most room (link.Opener), not on the swarm's choice as
// ping.Ping would: over QUIC the swarm may pick a lane that already carries
// its 256 streams, where the open waits for a free slot and a busy, healthy
// backend looks silent. (`bench -serve -transport quic` lost its backend that
// way at a few thousand streams.) Every lane full is an answer, not silence:
// the backend is carrying streams, and the failover path already counts and
// logs a full link.
func (b *Balancer) probe(p peer.ID, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	err := b.ping(ctx, p)
	if b.ctx.Err() != nil {
		return
	}
	silent := ctx.Err() != nil && !errors.Is(err, link.ErrFull)
	if err == nil || !silent {
		return
	}
	b.log.Warn("backend did not answer a probe; disconnecting it", "backend", p, "timeout", timeout)
	_ = b.h.Network().ClosePeer(p)
}

// ping runs one round of go-libp2p's ping protocol with p: 32 random bytes
// out, the same 32 back.
func (b *Balancer) ping(ctx context.Context, p peer.ID) error {
	s, err := b.opener.Open(ctx, func() []network.Conn { return b.h.Network().ConnsToPeer(p) }, ping.ID)
	if err != nil {
		return err
	}
	defer s.Reset()
	if d, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(d)
	}
	var out, in [ping.PingSize]byte
	if _, err := rand.Read(out[:]); err != nil {
		return err
	}
	if _, err := s.Write(out[:]); err != nil {
		return err
	}
	if _, err := io.ReadFull(s, in[:]); err != nil {
		return err
	}
	if in != out {
		return errors.New("ping: wrong answer")
	}
	return nil
}

package balancer

import (
	"context"
	"errors"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
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
func (b *Balancer) probe(p peer.ID, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	// ping.Ping closes its channel without a result when the context ends
	// first: that, or an error caused by the deadline, is silence. Any
	// other outcome is an answer.
	res, ok := <-ping.Ping(network.WithNoDial(ctx, "probe"), b.h, p)
	if b.ctx.Err() != nil {
		return
	}
	silent := (!ok && ctx.Err() != nil) || (ok && errors.Is(res.Error, context.DeadlineExceeded))
	if !silent {
		return
	}
	b.log.Warn("backend did not answer a probe; disconnecting it", "backend", p, "timeout", timeout)
	_ = b.h.Network().ClosePeer(p)
}

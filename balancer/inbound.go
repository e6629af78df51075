package balancer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/internal/link"
	"github.com/libp2p-balancer/libp2p-balancer/pipe"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// handleInbound routes a stream a remote peer opened on a routed protocol.
// Nothing is read from the remote peer until a backend has accepted, so a
// backend that refuses, fails or times out costs only time: the stream goes
// to the next backend of the pool with no byte lost, and each backend is
// offered the stream at most once.
func (b *Balancer) handleInbound(s network.Stream) {
	if err := s.Scope().SetService(wire.ServiceName); err != nil {
		s.ResetWithError(network.StreamResourceLimitExceeded)
		return
	}
	proto := s.Protocol()
	remote := s.Conn().RemotePeer()
	if r := b.admission.admitInbound(remote); r != nil {
		b.refused(Refusal{Direction: Inbound, Reason: r.reason, Protocol: proto, Requested: proto, Peer: remote, Detail: r.msg})
		s.ResetWithError(r.code)
		return
	}
	handedOff := false
	defer func() {
		if !handedOff {
			b.admission.releaseInbound(remote)
		}
	}()
	fwd := &pb.Forward{
		Peer:      []byte(remote),
		Protocols: []string{string(proto)},
		Addrs:     [][]byte{s.Conn().RemoteMultiaddr().Bytes()},
	}
	cands := b.candidates(proto, remote)
	for _, m := range cands {
		be := m.r.backend
		start := time.Now()
		bs, err := b.offer(be, fwd)
		if ejected, d := b.recordOutcome(be, outcomeOf(err)); ejected {
			b.log.Warn("backend ejected", "backend", be.id, "for", d, "after", err)
			b.cfg.tracer.BackendEjected(be.id, d)
		}
		if err != nil {
			b.log.Debug("backend did not take stream", "backend", be.id, "protocol", proto, "peer", remote, "err", err)
			continue
		}
		b.cfg.tracer.StreamAccepted(Inbound, proto, be.id, time.Since(start))
		b.carry(Inbound, proto, be, s, bs, func() { b.admission.releaseInbound(remote) })
		handedOff = true
		return
	}
	// Inbound protocols are routed ones (the handler is installed for
	// exactly those), so the protocol is its own label.
	if len(cands) == 0 {
		b.refused(Refusal{Direction: Inbound, Reason: ReasonNoBackend, Protocol: proto, Requested: proto, Peer: remote})
		s.ResetWithError(network.StreamResourceLimitExceeded)
		return
	}
	b.refused(Refusal{Direction: Inbound, Reason: ReasonRefusedByBackends, Protocol: proto, Requested: proto, Peer: remote,
		Detail: fmt.Sprintf("backends tried: %d", len(cands))})
	s.Reset()
}

// offer opens a forward stream to backend be and runs the inbound handshake
// on it, bounded by the handshake timeout. It returns the stream once the
// backend has answered OK.
//
// Only the deadline bounds the handshake, not Close: a handshake that
// completes after Close is refused by the closed group in carry, which
// resets both streams.
func (b *Balancer) offer(be *backendState, fwd *pb.Forward) (network.Stream, error) {
	ctx, cancel := context.WithTimeout(b.ctx, b.settings().handshakeTimeout)
	defer cancel()
	bs, err := b.opener.Open(ctx, func() []network.Conn { return b.h.Network().ConnsToPeer(be.id) }, wire.ForwardID)
	if errors.Is(err, link.ErrFull) && be.linkFull.Add(1) == 1 {
		b.log.Warn("backend's QUIC link is full and it opened no lane: it takes at most 256 streams per QUIC connection; streams past that go to other backends or are refused",
			"backend", be.id, "how", "open lanes (the backend library does), or connect the backend over TCP; see docs/spec.md, Stream capacity and lanes")
	}
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	if _, err := wire.SendForward(bs, fwd, deadline); err != nil {
		return nil, err
	}
	return bs, nil
}

// carry forwards bytes between the remote side of a stream (the remote peer
// for inbound, the target for outbound) and the backend side until both are
// done, counting the stream against backend be while it lasts, and then
// calls release. It returns at once: the copy runs on goroutines of its own,
// so that the handler's goroutine, whose stack grew during the handshake,
// ends (see pipe.Start).
func (b *Balancer) carry(dir Direction, proto protocol.ID, be *backendState, remote, backendSide network.Stream, release func()) {
	be.active.Add(1)
	tr := b.cfg.tracer
	cfg := &pipe.Config{
		IdleTimeout: b.settings().idleTimeout,
		Progress: func(d pipe.Direction, n int) {
			toBackend := d == pipe.AToB
			if toBackend {
				be.bytesTo.Add(int64(n))
			} else {
				be.bytesFrom.Add(int64(n))
			}
			tr.BytesForwarded(dir, toBackend, n)
		},
	}
	done := func(res pipe.Result) {
		tr.StreamEnded(dir, proto, be.id, res.AToB, res.BToA, res.Err == nil)
		be.active.Add(-1)
		release()
	}
	if b.cfg.naiveCopy {
		b.startNaive(remote, backendSide, cfg.Progress, done)
		return
	}
	// After Close the group resets both streams and reports ErrClosed
	// here at once, so the counters and limits are released the same way.
	b.active.Start(remote, backendSide, cfg, done)
}

package backend

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// outboundTimeout bounds NewStream when the caller's context has no
// deadline: the balancer may take its whole dial timeout (15 s by default)
// to reach the target.
const outboundTimeout = 30 * time.Second

// NewStream opens a stream to peer p through a balancer, on the first of
// pids that p accepts, so that p sees the balancer's peer ID as the remote
// peer. The returned stream's Protocol is the protocol p accepted.
//
// A refusal is a *wire.StatusError: DIAL_FAILED, PROTOCOL_NOT_SUPPORTED,
// PERMISSION_DENIED or RESOURCE_LIMIT_EXCEEDED. Balancers are tried in the
// order given to New, connected ones first; the next one is tried only when
// one could not be reached or could not dial p.
func (b *Backend) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	return NewStreamThrough(ctx, []*Backend{b}, p, pids...)
}

// NewStreamThrough opens a stream to peer p as Backend.NewStream does, with
// the balancers of several Backends: those of backends[0] first (connected
// ones first, then in the order given to New), then those of backends[1],
// and so on. It is for a program that runs one Backend per instance of a
// balancer scaled out, as the `balancer backend` sidecar does. The next
// balancer is tried only when one could not be reached or could not dial p;
// any other refusal would be the same everywhere and is returned at once.
func NewStreamThrough(ctx context.Context, backends []*Backend, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	if len(pids) == 0 {
		return nil, errors.New("backend: NewStream needs at least one protocol")
	}
	if len(backends) == 0 {
		return nil, errors.New("backend: NewStreamThrough needs at least one Backend")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, outboundTimeout)
		defer cancel()
	}
	var lastErr error
	for _, b := range backends {
		// Ordered when its turn comes, so that connectedness is fresh.
		for _, s := range b.orderedSessions() {
			str, err := s.open(ctx, p, pids)
			if err == nil {
				return str, nil
			}
			lastErr = err
			if !tryAnother(err) {
				return nil, err
			}
			if ctx.Err() != nil {
				return nil, lastErr
			}
		}
	}
	return nil, lastErr
}

// tryAnother reports whether an outbound failure through one balancer is
// worth trying through another: that balancer could not be reached, or it
// could not reach the target (DIAL_FAILED). Any other refusal would be the
// same everywhere.
func tryAnother(err error) bool {
	var se *wire.StatusError
	return !errors.As(err, &se) || se.Status == pb.Status_DIAL_FAILED
}

// orderedSessions lists sessions with connected balancers first.
func (b *Backend) orderedSessions() []*session {
	out := make([]*session, 0, len(b.sessions))
	var rest []*session
	for _, s := range b.sessions {
		if b.h.Network().Connectedness(s.ai.ID) == network.Connected {
			out = append(out, s)
		} else {
			rest = append(rest, s)
		}
	}
	return append(out, rest...)
}

// open runs the outbound handshake with this session's balancer.
func (s *session) open(ctx context.Context, p peer.ID, pids []protocol.ID) (network.Stream, error) {
	b := s.b
	if b.h.Network().Connectedness(s.ai.ID) != network.Connected {
		if err := s.connect(ctx); err != nil {
			return nil, fmt.Errorf("backend: connecting to balancer %s: %w", s.ai.ID, err)
		}
	}
	fs, err := s.opener.Open(ctx, s.lanes.conns, wire.ForwardID)
	if err != nil {
		return nil, fmt.Errorf("backend: opening forward stream to balancer %s: %w", s.ai.ID, err)
	}
	// In flight from its opening, as a forwarded stream is from its
	// handshake; the returned stream's wrapper takes the count over.
	b.inflight.Add(fs, nil)
	// The context bounds the handshake; once it is over, the stream is the
	// caller's and the context no longer matters.
	stop := context.AfterFunc(ctx, func() { fs.Reset() })
	req := &pb.Forward{Peer: []byte(p)}
	for _, pid := range pids {
		req.Protocols = append(req.Protocols, string(pid))
	}
	for _, a := range b.h.Peerstore().Addrs(p) {
		req.Addrs = append(req.Addrs, a.Bytes())
	}
	proto, err := wire.SendForward(fs, req, time.Time{})
	if !stop() {
		b.inflight.Remove(fs)
		return nil, fmt.Errorf("backend: outbound handshake: %w", ctx.Err())
	}
	if err != nil {
		b.inflight.Remove(fs)
		var se *wire.StatusError
		if errors.As(err, &se) {
			return nil, err
		}
		return nil, fmt.Errorf("backend: outbound handshake: %w", err)
	}
	s.lanes.check()
	return newStream(fs, proto, s.ai.ID, p, nil, &b.inflight), nil
}

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
	if len(pids) == 0 {
		return nil, errors.New("backend: NewStream needs at least one protocol")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, outboundTimeout)
		defer cancel()
	}
	var lastErr error
	for _, s := range b.orderedSessions() {
		str, err := s.open(ctx, p, pids)
		if err == nil {
			return str, nil
		}
		lastErr = err
		if !TryAnother(err) {
			return nil, err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

// TryAnother reports whether an outbound failure through one balancer is
// worth trying through another: that balancer could not be reached, or it
// could not reach the target (DIAL_FAILED). Any other refusal would be the
// same everywhere.
func TryAnother(err error) bool {
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
	if err := fs.Scope().SetService(wire.ServiceName); err != nil {
		fs.ResetWithError(network.StreamResourceLimitExceeded)
		b.inflight.Remove(fs)
		return nil, err
	}
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
	var resp pb.ForwardResponse
	err = wire.WriteMsg(fs, req)
	if err == nil {
		err = wire.NewReader(fs).ReadMsg(&resp)
	}
	if !stop() {
		b.inflight.Remove(fs)
		return nil, fmt.Errorf("backend: outbound handshake: %w", ctx.Err())
	}
	if err != nil {
		fs.Reset()
		b.inflight.Remove(fs)
		return nil, fmt.Errorf("backend: outbound handshake: %w", err)
	}
	if resp.GetStatus() != pb.Status_OK {
		fs.Close()
		b.inflight.Remove(fs)
		return nil, &wire.StatusError{Status: resp.GetStatus(), Text: resp.GetText()}
	}
	s.lanes.check()
	return newStream(fs, protocol.ID(resp.GetProtocol()), s.ai.ID, p, nil, &b.inflight), nil
}

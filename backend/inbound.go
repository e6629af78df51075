package backend

import (
	"errors"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/internal/logging"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// handleForward accepts a stream a balancer forwards from a remote peer and
// hands it to the handler registered for its protocol.
func (b *Backend) handleForward(s network.Stream) {
	balancerID := s.Conn().RemotePeer()
	sess := b.byPeer[balancerID]
	if sess == nil {
		// Only a configured balancer may speak for a remote peer; anyone
		// else could claim any peer ID in the Forward message. Anyone can
		// also loop on this, so the log sums up.
		b.refusals.Note(logging.Key{Msg: "forward stream reset", Reason: "not a balancer"}, "peer", balancerID)
		s.Reset()
		return
	}
	// Counted from here, before the draining check below, so that Drain
	// either waits for this stream or sees it refused. The group is never
	// closed, so Add always succeeds. The stream's wrapper takes the count
	// over once a handler has it.
	b.inflight.Add(s, nil)
	delivered := false
	defer func() {
		if !delivered {
			b.inflight.Remove(s)
		}
	}()
	if err := s.Scope().SetService(wire.ServiceName); err != nil {
		s.ResetWithError(network.StreamResourceLimitExceeded)
		return
	}
	_ = s.SetDeadline(time.Now().Add(b.cfg.handshakeTimeout))
	var req pb.Forward
	if err := wire.NewReader(s).ReadMsg(&req); err != nil {
		if errors.Is(err, wire.ErrMalformed) {
			wire.WriteFinal(s, &pb.ForwardResponse{Status: pb.Status_MALFORMED_MESSAGE, Text: err.Error()})
		} else {
			b.log.Debug("reading forward request failed", "balancer", balancerID, "err", err)
			s.Reset()
		}
		return
	}
	remote, raddr, serr := parseInbound(&req)
	var handler network.StreamHandler
	if serr == nil && b.draining.Load() {
		// An offer the balancer chose before it saw the release: refused, so
		// it goes to another backend, rather than accepted just as Drain
		// decides that nothing is in flight. (Streams that got this far are
		// already counted in b.inflight, above.)
		serr = wire.Errorf(pb.Status_REJECTED, "backend is draining")
	}
	if serr == nil {
		proto := protocol.ID(req.Protocols[0])
		if accept := b.acceptor(proto); accept == nil {
			serr = wire.Errorf(pb.Status_REJECTED, "no handler for %s", proto)
		} else if h, err := accept(remote, proto); err != nil {
			serr = wire.Errorf(pb.Status_REJECTED, "%v", err)
		} else if handler = h; handler == nil {
			serr = wire.Errorf(pb.Status_REJECTED, "no handler for %s", proto)
		}
	}
	if serr != nil {
		// Remote peers cause these through the balancer, as many as its
		// limits let through: the log sums up.
		b.refusals.Note(logging.Key{Msg: "forwarded stream refused", Reason: serr.Status.String()}, "balancer", balancerID, "detail", serr.Text)
		wire.WriteFinal(s, &pb.ForwardResponse{Status: serr.Status, Text: serr.Text})
		return
	}
	proto := protocol.ID(req.Protocols[0])
	if err := wire.WriteMsg(s, &pb.ForwardResponse{Status: pb.Status_OK, Protocol: string(proto)}); err != nil {
		// The handler still runs, on a dead stream, so that what its
		// acceptor acquired (a connection to a service) is released.
		s.Reset()
	} else {
		delivered = true
	}
	_ = s.SetDeadline(time.Time{})
	sess.lanes.check()
	handler(newStream(s, proto, balancerID, remote, raddr, &b.inflight))
}

// parseInbound validates an inbound Forward message.
func parseInbound(req *pb.Forward) (peer.ID, ma.Multiaddr, *wire.StatusError) {
	if len(req.GetProtocols()) != 1 {
		return "", nil, wire.Errorf(pb.Status_MALFORMED_MESSAGE, "an inbound forward names exactly one protocol, not %d", len(req.GetProtocols()))
	}
	if err := wire.ValidateProtocol(req.Protocols[0]); err != nil {
		return "", nil, wire.Errorf(pb.Status_MALFORMED_MESSAGE, "%v", err)
	}
	remote, err := peer.IDFromBytes(req.GetPeer())
	if err != nil {
		return "", nil, wire.Errorf(pb.Status_MALFORMED_MESSAGE, "bad remote peer ID: %v", err)
	}
	var raddr ma.Multiaddr
	if len(req.GetAddrs()) > 0 {
		if raddr, err = ma.NewMultiaddrBytes(req.Addrs[0]); err != nil {
			return "", nil, wire.Errorf(pb.Status_MALFORMED_MESSAGE, "bad remote address: %v", err)
		}
	}
	return remote, raddr, nil
}

package balancer

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	msmux "github.com/multiformats/go-multistream"

	"github.com/libp2p-balancer/libp2p-balancer/internal/link"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// handleOutbound serves a forward stream a backend opened to reach a peer
// of the network through the balancer.
func (b *Balancer) handleOutbound(s network.Stream) {
	if err := s.Scope().SetService(wire.ServiceName); err != nil {
		s.ResetWithError(network.StreamResourceLimitExceeded)
		return
	}
	from := s.Conn().RemotePeer()
	if !b.settings().acl.isBackend(from) {
		// Answer without reading: the balancer is no open proxy, and a
		// stranger costs one small write.
		const text = "this peer is not an allowed backend"
		b.refused(Refusal{Direction: Outbound, Status: pb.Status_PERMISSION_DENIED, Peer: from, Detail: text})
		wire.WriteFinal(s, &pb.ForwardResponse{Status: pb.Status_PERMISSION_DENIED, Text: text})
		return
	}
	_ = s.SetDeadline(time.Now().Add(b.settings().handshakeTimeout))
	var req pb.Forward
	if err := wire.NewReader(s).ReadMsg(&req); err != nil {
		if errors.Is(err, wire.ErrMalformed) {
			b.refused(Refusal{Direction: Outbound, Status: pb.Status_MALFORMED_MESSAGE, Peer: from, Detail: err.Error()})
			wire.WriteFinal(s, &pb.ForwardResponse{Status: pb.Status_MALFORMED_MESSAGE, Text: err.Error()})
		} else {
			s.Reset()
		}
		return
	}
	be := b.backend(from)
	target, protos, addrs, serr := b.checkOutbound(from, &req)
	if serr == nil {
		serr = b.admitOutbound(be)
	}
	if serr == nil {
		handedOff := false
		defer func() {
			if !handedOff {
				b.releaseOutbound(be)
			}
		}()
		_ = s.SetDeadline(time.Now().Add(b.settings().dialTimeout))
		var ts network.Stream
		start := time.Now()
		ts, serr = b.openTarget(from, target, addrs, protos)
		if serr == nil {
			ok := &pb.ForwardResponse{Status: pb.Status_OK, Protocol: string(ts.Protocol())}
			if err := wire.WriteMsg(s, ok); err != nil {
				s.Reset()
				ts.Reset()
				return
			}
			_ = s.SetDeadline(time.Time{})
			// The target confirmed one of the backend's protocols, but a
			// target may confirm anything: label it as a refusal would be.
			label := b.labelProtocol(ts.Protocol())
			b.cfg.tracer.StreamAccepted(Outbound, label, from, time.Since(start))
			b.carry(Outbound, label, be, ts, s, func() { b.releaseOutbound(be) })
			handedOff = true
			return
		}
	}
	// The first protocol asked for stands for the request; checkOutbound
	// returns the request's protocols only once they are all valid, so
	// fall back on the raw list for the events.
	var asked protocol.ID
	if len(protos) > 0 {
		asked = protos[0]
	} else if ps := req.GetProtocols(); len(ps) > 0 && wire.ValidateProtocol(ps[0]) == nil {
		asked = protocol.ID(ps[0])
	}
	b.refused(Refusal{Direction: Outbound, Status: serr.Status, Protocol: b.labelProtocol(asked), Requested: asked,
		Peer: from, Target: target, Detail: serr.Text})
	wire.WriteFinal(s, &pb.ForwardResponse{Status: serr.Status, Text: serr.Text})
}

// checkOutbound validates an outbound request from backend `from`.
func (b *Balancer) checkOutbound(from peer.ID, req *pb.Forward) (peer.ID, []protocol.ID, []ma.Multiaddr, *wire.StatusError) {
	target, err := peer.IDFromBytes(req.GetPeer())
	if err != nil {
		return "", nil, nil, wire.Errorf(pb.Status_MALFORMED_MESSAGE, "bad target peer ID: %v", err)
	}
	if len(req.GetProtocols()) == 0 {
		return target, nil, nil, wire.Errorf(pb.Status_MALFORMED_MESSAGE, "no protocol requested")
	}
	if limit := b.settings().limits.ProtocolsPerRequest; limit > 0 && len(req.GetProtocols()) > limit {
		return target, nil, nil, wire.Errorf(pb.Status_RESOURCE_LIMIT_EXCEEDED, "%d protocols exceed the limit of %d", len(req.GetProtocols()), limit)
	}
	protos := make([]protocol.ID, 0, len(req.GetProtocols()))
	for _, p := range req.GetProtocols() {
		if err := wire.ValidateProtocol(p); err != nil {
			return target, nil, nil, wire.Errorf(pb.Status_MALFORMED_MESSAGE, "%v", err)
		}
		if controlProtocol(p) {
			return target, nil, nil, wire.Errorf(pb.Status_PERMISSION_DENIED, "protocol %q is one of the balancer host's own and is never opened for a backend", p)
		}
		if !b.settings().acl.permits(from, p) {
			return target, nil, nil, wire.Errorf(pb.Status_PERMISSION_DENIED, "protocol %q is not allowed to this backend", p)
		}
		protos = append(protos, protocol.ID(p))
	}
	addrs := make([]ma.Multiaddr, 0, len(req.GetAddrs()))
	for _, raw := range req.GetAddrs() {
		a, err := ma.NewMultiaddrBytes(raw)
		if err != nil {
			return target, nil, nil, wire.Errorf(pb.Status_MALFORMED_MESSAGE, "bad target address: %v", err)
		}
		addrs = append(addrs, a)
	}
	if target == b.h.ID() {
		return target, nil, nil, wire.Errorf(pb.Status_DIAL_FAILED, "the target is the balancer itself")
	}
	if b.settings().acl.isBackend(target) && !b.settings().backendToBackend {
		return target, nil, nil, wire.Errorf(pb.Status_PERMISSION_DENIED, "the target is an allowed backend, and backend-to-backend streams are off")
	}
	return target, protos, addrs, nil
}

// openTarget connects to target and negotiates the first of protos it
// accepts.
//
// When identify has told the balancer's host that the target speaks one of
// protos, negotiation is lazy, as go-libp2p's host does it: the first such
// protocol is reported at once and its proposal goes out with the backend's
// first bytes, which saves a round trip to the target on every stream (issue
// 13). A target whose identify was stale and that refuses it resets the
// stream at the first read. Otherwise negotiation is eager (one round trip
// per refused protocol), so that a target accepting none of them is a clean
// PROTOCOL_NOT_SUPPORTED.
//
// The addresses the request names go through the dial policy first, and
// a dial counts against the backend's dial rate (see dialpolicy.go).
func (b *Balancer) openTarget(from, target peer.ID, addrs []ma.Multiaddr, protos []protocol.ID) (network.Stream, *wire.StatusError) {
	ctx, cancel := context.WithTimeout(b.ctx, b.settings().dialTimeout)
	defer cancel()
	if serr := b.admitDial(from, target); serr != nil {
		return nil, serr
	}
	policy := b.settings().dialPolicy()
	addrs, refused := policy.filterHints(addrs)
	if len(addrs) > 0 {
		b.h.Peerstore().AddAddrs(target, addrs, peerstore.TempAddrTTL)
	}
	if err := b.h.Connect(ctx, peer.AddrInfo{ID: target}); err != nil {
		return nil, policy.dialFailure(target, err, refused)
	}
	ts, err := b.h.Network().NewStream(network.WithNoDial(ctx, "connected"), target)
	if err != nil {
		return nil, wire.Errorf(pb.Status_DIAL_FAILED, "opening a stream to %s: %v", target, err)
	}
	var selected protocol.ID
	known, _ := b.h.Peerstore().SupportsProtocols(target, protos...)
	if len(known) > 0 {
		selected = known[0]
	} else {
		deadline, _ := ctx.Deadline()
		_ = ts.SetDeadline(deadline)
		selected, err = msmux.SelectOneOf(protos, ts)
		_ = ts.SetDeadline(time.Time{})
		if err != nil {
			ts.Reset()
			if errors.Is(err, msmux.ErrNotSupported[protocol.ID]{}) {
				return nil, wire.Errorf(pb.Status_PROTOCOL_NOT_SUPPORTED, "%s accepts none of %v", target, protos)
			}
			return nil, wire.Errorf(pb.Status_DIAL_FAILED, "negotiating with %s: %v", target, err)
		}
	}
	if err := ts.SetProtocol(selected); err != nil {
		ts.Reset()
		return nil, wire.Errorf(pb.Status_RESOURCE_LIMIT_EXCEEDED, "resource manager: %v", err)
	}
	if err := ts.Scope().SetService(wire.ServiceName); err != nil {
		ts.Reset()
		return nil, wire.Errorf(pb.Status_RESOURCE_LIMIT_EXCEEDED, "resource manager: %v", err)
	}
	if len(known) > 0 {
		return link.Lazy(ts, selected), nil
	}
	return ts, nil
}

// backend returns the state of backend p, creating it for a backend that
// opens outbound streams without having registered any route.
func (b *Balancer) backend(p peer.ID) *backendState {
	b.mu.Lock()
	defer b.mu.Unlock()
	be := b.backends[p]
	if be == nil {
		be = &backendState{id: p, connected: true, routes: map[protocol.ID]*route{}}
		b.backends[p] = be
	}
	return be
}

// admitOutbound takes a slot for an outbound stream of backend be, or
// refuses with RESOURCE_LIMIT_EXCEEDED naming the limit.
func (b *Balancer) admitOutbound(be *backendState) *wire.StatusError {
	n := be.outbound.Add(1)
	var err *wire.StatusError
	if l := int64(b.settings().limits.OutboundPerBackend); l > 0 && n > l {
		err = wire.Errorf(pb.Status_RESOURCE_LIMIT_EXCEEDED, "this backend's limit of %d outbound streams is reached", l)
	} else if l := int64(b.settings().limits.StreamsPerBackend); l > 0 && be.active.Load() >= l {
		err = wire.Errorf(pb.Status_RESOURCE_LIMIT_EXCEEDED, "this backend's limit of %d streams is reached", l)
	} else if aerr := b.admission.admitOutbound(); aerr != nil {
		err = wire.Errorf(pb.Status_RESOURCE_LIMIT_EXCEEDED, "%v", aerr)
	}
	if err != nil {
		be.outbound.Add(-1)
	}
	return err
}

func (b *Balancer) releaseOutbound(be *backendState) {
	be.outbound.Add(-1)
	b.admission.releaseOutbound()
}

// controlProtocols are the prefixes of the protocols by which the balancer's
// host speaks for itself: a backend opening one of them to a remote peer
// would speak as the host (an identify push rewriting what peers believe of
// its addresses and protocols; a forward stream that another balancer's
// backend trusts). Ping is not among them: services behind backend.NewHost
// (bitswap) ping the peers they talk to.
var controlProtocols = []string{
	wire.ProtocolPrefix,
	"/ipfs/id/",              // identify, identify push
	"/p2p/id/",               // identify delta (old)
	"/libp2p/autonat/",       // AutoNAT v1 and v2
	"/libp2p/dcutr",          // hole punching
	"/libp2p/circuit/relay/", // circuit relay v2 hop and stop
}

// controlProtocol reports whether outbound streams on p are refused
// whatever the backend's grant.
func controlProtocol(p string) bool {
	for _, pre := range controlProtocols {
		if strings.HasPrefix(p, pre) {
			return true
		}
	}
	return false
}

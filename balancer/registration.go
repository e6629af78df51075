package balancer

import (
	"errors"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/libp2p-balancer/libp2p-balancer/internal/logging"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// registrationIdle is how long a routing-request stream may sit between
// requests before the balancer closes it. Backends extend routes well within
// a TTL, but nothing obliges them to reuse a stream, so an idle one is only
// a cost.
const registrationIdle = time.Minute

// handleRoutingRequest serves a routing-request stream: one response per
// request, for as many requests as the backend sends, until it closes the
// stream or sends something malformed. Closing the stream removes no route.
func (b *Balancer) handleRoutingRequest(s network.Stream) {
	if err := s.Scope().SetService(wire.ServiceName); err != nil {
		s.ResetWithError(network.StreamResourceLimitExceeded)
		return
	}
	p := s.Conn().RemotePeer()
	if !b.settings().acl.isBackend(p) {
		// Answer without reading: a stranger costs one small write.
		b.registrationRefused(p, pb.Status_PERMISSION_DENIED, "")
		wire.WriteFinal(s, &pb.RoutingResponse{Status: pb.Status_PERMISSION_DENIED, Text: "this peer is not an allowed backend"})
		return
	}
	r := wire.NewReader(s)
	for {
		_ = s.SetReadDeadline(time.Now().Add(registrationIdle))
		var req pb.RoutingRequest
		if err := r.ReadMsg(&req); err != nil {
			if errors.Is(err, wire.ErrMalformed) {
				b.registrationRefused(p, pb.Status_MALFORMED_MESSAGE, err.Error())
				wire.WriteFinal(s, &pb.RoutingResponse{Status: pb.Status_MALFORMED_MESSAGE, Text: err.Error()})
				return
			}
			if err == io.EOF {
				s.Close()
			} else {
				s.Reset()
			}
			return
		}
		resp := b.validate(&req)
		if resp == nil {
			resp = b.apply(p, &req)
		}
		switch resp.Status {
		case pb.Status_OK:
			b.cfg.tracer.RegistrationHandled(p, resp.Status)
		case pb.Status_DRAINING:
			// Every backend hears it at each attempt while the drain
			// lasts; the drain itself is logged once.
			b.cfg.tracer.RegistrationHandled(p, resp.Status)
			b.log.Debug("registration refused", "backend", p, "status", resp.Status)
		default:
			b.registrationRefused(p, resp.Status, resp.Text)
		}
		_ = s.SetWriteDeadline(time.Now().Add(b.settings().handshakeTimeout))
		if err := wire.WriteMsg(s, resp); err != nil {
			s.Reset()
			return
		}
		if resp.Status == pb.Status_MALFORMED_MESSAGE {
			s.Close()
			return
		}
	}
}

// registrationRefused reports a routing request answered with status to
// the Tracer and the log. A stranger may loop on the routing-request
// protocol as on any other, so the log sums up (logging.Summary).
func (b *Balancer) registrationRefused(p peer.ID, status pb.Status, text string) {
	b.cfg.tracer.RegistrationHandled(p, status)
	attrs := []any{"peer", p}
	if text != "" {
		attrs = append(attrs, "detail", text)
	}
	b.refusals.Note(logging.Key{Msg: "registration refused", Reason: status.String()}, attrs...)
}

// validate checks a request's shape; nil means it may be applied.
func (b *Balancer) validate(req *pb.RoutingRequest) *pb.RoutingResponse {
	n := len(req.GetProtocols()) + len(req.GetRelease())
	if limit := b.settings().limits.ProtocolsPerRequest; limit > 0 && n > limit {
		return refuse(pb.Status_RESOURCE_LIMIT_EXCEEDED, "%d protocols in one request exceed the limit of %d", n, limit)
	}
	for _, list := range [][]string{req.GetProtocols(), req.GetRelease()} {
		for _, proto := range list {
			if err := wire.ValidateProtocol(proto); err != nil {
				return refuse(pb.Status_MALFORMED_MESSAGE, "%v", err)
			}
		}
	}
	return nil
}

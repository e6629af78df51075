package balancer

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// Direction says which side opened a forwarded stream: a remote peer
// (Inbound) or a backend (Outbound). It is not pipe.Direction, which names
// one of the two byte copies that carry any stream.
type Direction int

const (
	// Inbound streams were opened by a remote peer and routed to a backend.
	Inbound Direction = iota
	// Outbound streams were opened by a backend through the balancer.
	Outbound
)

func (d Direction) String() string {
	if d == Outbound {
		return "outbound"
	}
	return "inbound"
}

// Tracer observes what the balancer does, for metrics. Every method is
// called synchronously on the path it reports, so it must be quick and must
// not block; the Prometheus implementation is in package metrics. The
// protocols passed as arguments, and Refusal.Protocol, come from bounded
// sets (routed protocols, protocols granted by exact name, OtherProtocol),
// never a string a remote peer or a backend chose freely, so they may be
// metric labels; Refusal.Requested and peer IDs may not.
type Tracer interface {
	// RegistrationHandled reports a routing request and the status it got.
	RegistrationHandled(backend peer.ID, status pb.Status)
	// RoutesChanged reports the number of routes and of backends with at
	// least one route after a change.
	RoutesChanged(routes, backends int)
	// StreamAccepted reports a stream that a backend (inbound) or target
	// (outbound) accepted, and how long its handshake took. An outbound
	// protocol outside the bounded sets is OtherProtocol, here and in
	// StreamEnded.
	StreamAccepted(dir Direction, proto protocol.ID, backend peer.ID, handshake time.Duration)
	// StreamRefused reports a stream refused before it reached a backend
	// (inbound) or a target (outbound), and why.
	StreamRefused(r Refusal)
	// StreamEnded reports a forwarded stream that ended, with the bytes it
	// carried each way and whether it ended cleanly.
	StreamEnded(dir Direction, proto protocol.ID, backend peer.ID, toBackend, fromBackend int64, clean bool)
	// BytesForwarded reports bytes as they move, for live rates; toBackend
	// says which way.
	BytesForwarded(dir Direction, toBackend bool, n int)
	// BackendEjected reports a passive-health ejection.
	BackendEjected(backend peer.ID, d time.Duration)
}

// WithTracer sets the Tracer; default none.
func WithTracer(t Tracer) Option {
	return func(c *config) error {
		c.tracer = t
		return nil
	}
}

// nopTracer stands in when no Tracer is set, so call sites need no nil
// checks.
type nopTracer struct{}

func (nopTracer) RegistrationHandled(peer.ID, pb.Status)                          {}
func (nopTracer) RoutesChanged(int, int)                                          {}
func (nopTracer) StreamAccepted(Direction, protocol.ID, peer.ID, time.Duration)   {}
func (nopTracer) StreamRefused(Refusal)                                           {}
func (nopTracer) StreamEnded(Direction, protocol.ID, peer.ID, int64, int64, bool) {}
func (nopTracer) BytesForwarded(Direction, bool, int)                             {}
func (nopTracer) BackendEjected(peer.ID, time.Duration)                           {}

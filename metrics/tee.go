package metrics

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// Tee returns a balancer.Tracer that passes every call to each of tracers in
// turn, for a balancer that feeds both this package's Tracer and, say, the
// admin page's recent-events recorder (balancer.WithTracer takes one).
// Nil tracers are skipped; with a single one left, Tee returns it as it is,
// so that the data path pays no extra call.
func Tee(tracers ...balancer.Tracer) balancer.Tracer {
	var ts tee
	for _, t := range tracers {
		switch t := t.(type) {
		case nil:
		case tee:
			ts = append(ts, t...) // flatten nested tees
		default:
			ts = append(ts, t)
		}
	}
	if len(ts) == 1 {
		return ts[0]
	}
	return ts
}

type tee []balancer.Tracer

func (ts tee) RegistrationHandled(p peer.ID, s pb.Status) {
	for _, t := range ts {
		t.RegistrationHandled(p, s)
	}
}

func (ts tee) RoutesChanged(routes, backends int) {
	for _, t := range ts {
		t.RoutesChanged(routes, backends)
	}
}

func (ts tee) StreamAccepted(dir balancer.Direction, proto protocol.ID, backend peer.ID, handshake time.Duration) {
	for _, t := range ts {
		t.StreamAccepted(dir, proto, backend, handshake)
	}
}

func (ts tee) StreamRefused(r balancer.Refusal) {
	for _, t := range ts {
		t.StreamRefused(r)
	}
}

func (ts tee) StreamEnded(dir balancer.Direction, proto protocol.ID, backend peer.ID, toBackend, fromBackend int64, clean bool) {
	for _, t := range ts {
		t.StreamEnded(dir, proto, backend, toBackend, fromBackend, clean)
	}
}

func (ts tee) BytesForwarded(dir balancer.Direction, toBackend bool, n int) {
	for _, t := range ts {
		t.BytesForwarded(dir, toBackend, n)
	}
}

func (ts tee) BackendEjected(backend peer.ID, d time.Duration) {
	for _, t := range ts {
		t.BackendEjected(backend, d)
	}
}

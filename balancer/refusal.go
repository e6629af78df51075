package balancer

import (
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/internal/logging"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// Reason says why the balancer refused a stream. Inbound refusals have a
// reason of their own; outbound ones are ReasonStatus, and the wire status
// the backend was answered with says the rest (as circuit relay's tracer
// takes a pb.Status).
type Reason uint8

const (
	// ReasonStatus: an outbound request was answered with Refusal.Status.
	ReasonStatus Reason = iota
	// ReasonLimit: a concurrency limit (balancer-wide or per remote peer)
	// refused an inbound stream.
	ReasonLimit
	// ReasonRate: the remote peer's new-stream rate was exceeded.
	ReasonRate
	// ReasonNoBackend: no backend of the pool could be offered the stream
	// (none connected, healthy and under its limits).
	ReasonNoBackend
	// ReasonRefusedByBackends: every backend offered the stream refused,
	// failed or timed out.
	ReasonRefusedByBackends
)

// String is the reason in words, as the log and the events list show it.
func (r Reason) String() string {
	switch r {
	case ReasonStatus:
		return "status"
	case ReasonLimit:
		return "limit"
	case ReasonRate:
		return "rate"
	case ReasonNoBackend:
		return "no backend"
	case ReasonRefusedByBackends:
		return "refused by backends"
	}
	return "unknown"
}

// OtherProtocol stands for a protocol outside the bounded set in
// Refusal.Protocol and in the protocols passed to StreamAccepted and
// StreamEnded for outbound streams. Protocol IDs start with "/", so it
// cannot be one.
const OtherProtocol protocol.ID = "other"

// Refusal describes one refused stream. The balancer builds it once where it
// refuses, and the same value goes to the log and to the Tracer, so that
// they cannot disagree.
type Refusal struct {
	// Direction of the refused stream.
	Direction Direction
	// Reason is why; ReasonStatus for every outbound refusal.
	Reason Reason
	// Status is the wire status an outbound request was answered with;
	// pb.Status_UNUSED for inbound refusals (the remote peer's stream is
	// reset, with the code of a limit where one applies).
	Status pb.Status
	// Protocol is Requested when that belongs to a bounded set (a routed
	// protocol, which every inbound one is, or one granted by exact name
	// in the allow list), OtherProtocol when it does not, and empty when
	// none was read (a stranger's outbound request is not read). It is
	// safe as a metric label.
	Protocol protocol.ID
	// Requested is the protocol as asked for, for logs and events. On an
	// outbound request it is whatever the backend chose: never use it as a
	// metric label.
	Requested protocol.ID
	// Peer opened the refused stream: the remote peer (inbound), or the
	// backend or stranger that asked (outbound). Not a metric label.
	Peer peer.ID
	// Target is the peer an outbound request named, when it was valid.
	Target peer.ID
	// Detail says more in words: which limit, how many backends were
	// tried, or the text sent with the status.
	Detail string
}

// Why is the refusal's reason in words: the wire status's name for an
// outbound refusal ("PERMISSION_DENIED"), the Reason otherwise.
func (r Refusal) Why() string {
	if r.Reason == ReasonStatus {
		return r.Status.String()
	}
	return r.Reason.String()
}

// refused reports r to the Tracer and the log; every refused stream goes
// through here. The log sums up under a flood (logging.Summary); the Tracer
// sees every refusal.
func (b *Balancer) refused(r Refusal) {
	b.cfg.tracer.StreamRefused(r)
	msg := "inbound stream refused"
	if r.Direction == Outbound {
		msg = "outbound stream refused"
	}
	attrs := make([]any, 0, 10)
	if r.Requested != "" {
		attrs = append(attrs, "protocol", r.Requested)
	}
	if r.Peer != "" {
		attrs = append(attrs, "peer", r.Peer)
	}
	if r.Target != "" {
		attrs = append(attrs, "target", r.Target)
	}
	if r.Detail != "" {
		attrs = append(attrs, "detail", r.Detail)
	}
	b.refusals.Note(logging.Key{Msg: msg, Reason: r.Why()}, attrs...)
}

// labelProtocol returns p when it belongs to a bounded set (routed now, or
// granted by exact name to some backend), OtherProtocol when it does not,
// and "" for "". Outbound protocols are chosen by backends, and one looping
// over random protocol IDs must not create metric series without end.
func (b *Balancer) labelProtocol(p protocol.ID) protocol.ID {
	if p == "" || b.settings().acl.namesExactly(string(p)) {
		return p
	}
	b.mu.Lock()
	_, routed := b.pools[p]
	b.mu.Unlock()
	if routed {
		return p
	}
	return OtherProtocol
}

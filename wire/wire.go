// Package wire is the balancer protocol's shared vocabulary: its protocol
// IDs, its size-capped message framing, and the mapping between wire statuses
// and Go errors. Both the balancer and the backend import it, so the two sides
// cannot drift apart. The protocol itself is described in docs/spec.md.
package wire

import (
	"github.com/libp2p/go-libp2p/core/protocol"
)

const (
	// RoutingRequestID is opened by a backend to the balancer to add, extend,
	// release or query its routes.
	RoutingRequestID protocol.ID = "/libp2p/balancer/routing-request"
	// ForwardID is opened by the balancer to a backend to deliver an inbound
	// stream, and by a backend to the balancer to open an outbound one.
	ForwardID protocol.ID = "/libp2p/balancer/forward"

	// ProtocolPrefix is the prefix of every protocol the balancer serves
	// itself; no protocol under it can be routed.
	ProtocolPrefix = "/libp2p/balancer/"

	// ServiceName is the resource manager service that every balancer and
	// backend stream is accounted under.
	ServiceName = "libp2p.balancer"

	// MaxMessageSize is the largest message, length prefix excluded, that
	// either side accepts. A larger one is malformed.
	MaxMessageSize = 16 << 10

	// MaxProtocolLength is the longest protocol ID either side accepts; the
	// libp2p multistream-select limit on a protocol name is about 1 KiB too.
	MaxProtocolLength = 1024

	// MaxWeight is the largest RoutingRequest.weight a balancer honours; a
	// larger one counts as MaxWeight. Without a cap a backend claiming
	// 2^32-1 takes all of a weighted pool's new streams (issue 11). 256 is
	// HAProxy's range: ratios up to 1:256, and no backend claims more than
	// 256 times the share of a backend of weight 1.
	MaxWeight = 256
)

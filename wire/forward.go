package wire

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// SendForward runs the opening side of the forward handshake on s, a new
// stream on ForwardID: it accounts s under ServiceName, sends req and reads
// the answer, with deadline on both (none when it is zero). The balancer
// offers an inbound stream to a backend with it, and a backend asks a
// balancer for an outbound stream with it.
//
// On OK it clears the deadline and returns the protocol the answer names
// (for an outbound stream, the one the target accepted); s then carries the
// forwarded bytes. A refusal is a *StatusError, after which s is closed (the
// answer was the last message); on any other failure s is reset.
func SendForward(s network.Stream, req *pb.Forward, deadline time.Time) (protocol.ID, error) {
	if err := s.Scope().SetService(ServiceName); err != nil {
		s.ResetWithError(network.StreamResourceLimitExceeded)
		return "", fmt.Errorf("resource manager: %w", err)
	}
	_ = s.SetDeadline(deadline)
	if err := WriteMsg(s, req); err != nil {
		s.Reset()
		return "", fmt.Errorf("sending the forward request: %w", err)
	}
	var resp pb.ForwardResponse
	if err := NewReader(s).ReadMsg(&resp); err != nil {
		s.Reset()
		return "", fmt.Errorf("reading the forward answer: %w", err)
	}
	if resp.GetStatus() != pb.Status_OK {
		s.Close()
		return "", &StatusError{Status: resp.GetStatus(), Text: resp.GetText()}
	}
	_ = s.SetDeadline(time.Time{})
	return protocol.ID(resp.GetProtocol()), nil
}

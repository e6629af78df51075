package balancer_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

const (
	protoA1 protocol.ID = "/test/a1/1.0.0"
	protoA2 protocol.ID = "/test/a2/1.0.0"
	protoB1 protocol.ID = "/test/b1/1.0.0"
	protoB2 protocol.ID = "/test/b2/1.0.0"
)

// TestSeedScenario is the request the project was founded on: backends A
// (A1, A2) and B (B1, B2) share the balancer's peer ID; D reaches A through
// the balancer and A sees D; B reaches E through the balancer, settling on
// B2, and E sees the balancer.
func TestSeedScenario(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a, b := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{a, b}, loopbackTargets)

		type seen struct {
			proto         protocol.ID
			remote, local string
			remoteAddr    string
		}
		seenA := make(chan seen, 2)
		record := func(s network.Stream) {
			seenA <- seen{s.Protocol(), s.Conn().RemotePeer().String(), s.Conn().LocalPeer().String(), s.Conn().RemoteMultiaddr().String()}
			testnet.Echo(s)
		}
		f.NewBackend(a, map[protocol.ID]network.StreamHandler{protoA1: record, protoA2: record})
		beB, bHost := f.NewBackend(b, map[protocol.ID]network.StreamHandler{protoB1: testnet.Echo, protoB2: testnet.Echo})

		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, protoA1, protoA2, protoB1, protoB2)

		// Inbound: D opens A1 and A2 to the balancer and reaches A.
		var dAddr string
		for _, c := range f.Host.Network().ConnsToPeer(d.ID()) {
			dAddr = c.RemoteMultiaddr().String()
		}
		for _, p := range []protocol.ID{protoA1, protoA2} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			s, err := d.NewStream(ctx, f.Host.ID(), p)
			cancel()
			if err != nil {
				t.Fatalf("D opens %s: %v", p, err)
			}
			testnet.CheckRoundTrip(t, s, testnet.RandomBytes(256<<10))
			got := <-seenA
			want := seen{p, d.ID().String(), f.Host.ID().String(), dAddr}
			if got != want {
				t.Fatalf("A saw %+v, want %+v", got, want)
			}
		}

		// Outbound: B reaches E, which serves only B2, offering B1 then B2.
		e := testnet.NewHost(t, tr, testnet.Options{})
		eSaw := make(chan string, 1)
		e.SetStreamHandler(protoB2, func(s network.Stream) {
			eSaw <- s.Conn().RemotePeer().String()
			testnet.Echo(s)
		})
		bHost.Peerstore().AddAddrs(e.ID(), e.Addrs(), time.Hour)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := beB.NewStream(ctx, e.ID(), protoB1, protoB2)
		if err != nil {
			t.Fatalf("B opens a stream to E: %v", err)
		}
		if s.Protocol() != protoB2 {
			t.Fatalf("accepted protocol %s, want %s", s.Protocol(), protoB2)
		}
		if s.Conn().RemotePeer() != e.ID() || s.Conn().LocalPeer() != f.Host.ID() {
			t.Fatalf("outbound stream conn: remote %s local %s", s.Conn().RemotePeer(), s.Conn().LocalPeer())
		}
		testnet.CheckRoundTrip(t, s, testnet.RandomBytes(256<<10))
		if got := <-eSaw; got != f.Host.ID().String() {
			t.Fatalf("E saw remote peer %s, want the balancer %s", got, f.Host.ID())
		}

		// E accepts none of these: PROTOCOL_NOT_SUPPORTED.
		_, err = beB.NewStream(ctx, e.ID(), protoB1)
		if !errors.Is(err, &wire.StatusError{Status: pb.Status_PROTOCOL_NOT_SUPPORTED}) {
			t.Fatalf("outbound to an unsupported protocol: err = %v, want PROTOCOL_NOT_SUPPORTED", err)
		}
	})
}

// TestOutboundLazyNegotiation: when identify has told the balancer that the
// target speaks a requested protocol, the balancer answers the backend at
// once and sends the proposal with the first bytes; the bytes arrive whole.
// If the balancer's view was stale and the target refuses the protocol, the
// stream fails at the first read instead of carrying bytes to nobody, and
// the next stream to the same target works.
func TestOutboundLazyNegotiation(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		b := lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{b}, loopbackTargets)
		beB, bHost := f.NewBackend(b, nil)
		e := testnet.NewHost(t, tr, testnet.Options{})
		e.SetStreamHandler(protoB2, testnet.Echo)
		bHost.Peerstore().AddAddrs(e.ID(), e.Addrs(), time.Hour)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := beB.NewStream(ctx, e.ID(), protoB1, protoB2)
		if err != nil || s.Protocol() != protoB2 {
			t.Fatalf("B opens a stream to E: %v, protocol %q; want %s", err, s.Protocol(), protoB2)
		}
		testnet.CheckRoundTrip(t, s, testnet.RandomBytes(64<<10))

		// Now the balancer believes E serves B1 too (as if E had
		// dropped it without an identify push).
		f.Host.Peerstore().AddProtocols(e.ID(), protoB1)
		s, err = beB.NewStream(ctx, e.ID(), protoB1)
		if err != nil {
			t.Fatalf("B opens B1, which the balancer believes E serves: %v", err)
		}
		if s.Protocol() != protoB1 {
			t.Fatalf("reported protocol %q, want %s", s.Protocol(), protoB1)
		}
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := s.Write([]byte("to nobody")); err == nil {
			_ = s.CloseWrite()
		}
		_, err = io.ReadAll(s)
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("reading a stream on a protocol E refuses: %v; want a reset, at once", err)
		}
		s, err = beB.NewStream(ctx, e.ID(), protoB2)
		if err != nil {
			t.Fatal(err)
		}
		testnet.CheckRoundTrip(t, s, testnet.RandomBytes(1<<10))
	})
}

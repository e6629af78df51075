package balancer_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/proto"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// The handshake fuzz targets drive real hosts on loopback with arbitrary
// bytes as a stream's content, then check that the side under test still
// serves a valid request: no input may crash it or wedge it. One set of
// hosts serves every input of a target (built on the *testing.F), since
// building hosts per input would make each run mostly setup.

// fuzzEnv is a balancer with one allowed backend.
type fuzzEnv struct {
	f      *lbtest.Fixture
	raw    host.Host // the allowed backend's identity, driven by hand
	be     *backend.Backend
	beHost host.Host // a library backend, for the inbound delivery target
	d      peer.ID
}

func newFuzzEnv(f *testing.F) *fuzzEnv {
	raw, lib := lbtest.NewIdentity(f), lbtest.NewIdentity(f)
	fx := lbtest.New(f, testnet.TCP, []lbtest.Identity{raw, lib})
	rh := testnet.NewHost(f, testnet.TCP, testnet.Options{Key: raw.Key, LinkPeers: []peer.ID{fx.Host.ID()}, NoListen: true})
	testnet.Connect(f, rh, fx.Host)
	be, bh := fx.NewBackend(lib, map[protocol.ID]network.StreamHandler{"/fuzz/echo": testnet.Echo})
	lbtest.WaitRegistered(f, be, "/fuzz/echo")
	_, d := testnet.Key(f)
	return &fuzzEnv{f: fx, raw: rh, be: be, beHost: bh, d: d}
}

// sendRaw opens proto from h to p, writes data, half-closes, and reads
// whatever comes back until the stream ends or a deadline passes.
func sendRaw(h host.Host, p peer.ID, proto protocol.ID, data []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, p, proto)
	if err != nil {
		return
	}
	defer s.Reset()
	_ = s.SetDeadline(time.Now().Add(2 * time.Second))
	_, _ = s.Write(data)
	_ = s.CloseWrite()
	_, _ = io.Copy(io.Discard, s)
}

func framed(msgs ...proto.Message) []byte {
	var b bytes.Buffer
	for _, m := range msgs {
		_ = wire.WriteMsg(&b, m)
	}
	return b.Bytes()
}

// addSeeds adds a valid handshake and the usual ways to break one.
func addSeeds(f *testing.F, valid []byte) {
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add(append(append([]byte{}, valid...), "raw data after the handshake"...))
	f.Add([]byte{0x81, 0x80, 0x01}) // a length one byte over the cap
	f.Add([]byte{5, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
}

// FuzzRegistrationHandshake: arbitrary bytes on a routing-request stream
// from an allowed backend.
func FuzzRegistrationHandshake(f *testing.F) {
	env := newFuzzEnv(f)
	addSeeds(f, framed(&pb.RoutingRequest{Protocols: []string{"/a", "/b"}, TtlSeconds: 5}, &pb.RoutingRequest{Release: []string{"/a"}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		sendRaw(env.raw, env.f.Host.ID(), wire.RoutingRequestID, data)
		if resp := lbtest.RawRequest(t, env.raw, env.f.Host.ID(), &pb.RoutingRequest{}); resp.Status != pb.Status_OK {
			t.Fatalf("balancer stopped serving after %x: %v", data, resp)
		}
	})
}

// FuzzOutboundHandshake: arbitrary bytes on a forward stream from an
// allowed backend to the balancer.
func FuzzOutboundHandshake(f *testing.F) {
	env := newFuzzEnv(f)
	addSeeds(f, framed(&pb.Forward{Peer: []byte(env.d), Protocols: []string{"/x"}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		sendRaw(env.raw, env.f.Host.ID(), wire.ForwardID, data)
		if resp := lbtest.RawRequest(t, env.raw, env.f.Host.ID(), &pb.RoutingRequest{}); resp.Status != pb.Status_OK {
			t.Fatalf("balancer stopped serving after %x: %v", data, resp)
		}
	})
}

// FuzzInboundDelivery: arbitrary bytes on a forward stream from the
// balancer to a backend; the backend then still accepts a valid one.
func FuzzInboundDelivery(f *testing.F) {
	env := newFuzzEnv(f)
	valid := framed(&pb.Forward{Peer: []byte(env.d), Protocols: []string{"/fuzz/echo"}})
	addSeeds(f, valid)
	f.Fuzz(func(t *testing.T, data []byte) {
		lbHost := env.f.Host
		sendRaw(lbHost, env.beHost.ID(), wire.ForwardID, data)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := lbHost.NewStream(ctx, env.beHost.ID(), wire.ForwardID)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Reset()
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := s.Write(valid); err != nil {
			t.Fatal(err)
		}
		var resp pb.ForwardResponse
		if err := wire.NewReader(s).ReadMsg(&resp); err != nil || resp.Status != pb.Status_OK {
			t.Fatalf("backend stopped accepting after %x: %v %v", data, &resp, err)
		}
	})
}

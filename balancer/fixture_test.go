package balancer_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// fixture is a balancer on a real host, with the identities of the backends
// it allows.
type fixture struct {
	t    testing.TB
	tr   testnet.Transport
	host host.Host
	lb   *balancer.Balancer
}

type identity struct {
	key crypto.PrivKey
	id  peer.ID
}

func newIdentity(t testing.TB) identity {
	k, id := testnet.Key(t)
	return identity{k, id}
}

// newFixture starts a balancer whose host has ping disabled (so that ping
// can be routed) and allows the given backends any protocol unless opts say
// otherwise.
func newFixture(t testing.TB, tr testnet.Transport, allowed []identity, opts ...balancer.Option) *fixture {
	t.Helper()
	var ids []peer.ID
	for _, a := range allowed {
		ids = append(ids, a.id)
		opts = append([]balancer.Option{balancer.WithAllow(a.id)}, opts...)
	}
	h := testnet.NewHost(t, tr, testnet.Options{LinkPeers: ids, Extra: []libp2p.Option{libp2p.Ping(false)}})
	lb, err := balancer.New(h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	return &fixture{t: t, tr: tr, host: h, lb: lb}
}

func (f *fixture) info() peer.AddrInfo { return testnet.Info(f.host) }

// newBackend starts a backend host with identity who, connected to the
// balancer, and serving handlers.
func (f *fixture) newBackend(who identity, handlers map[protocol.ID]network.StreamHandler, opts ...backend.Option) (*backend.Backend, host.Host) {
	f.t.Helper()
	h := testnet.NewHost(f.t, f.tr, testnet.Options{Key: who.key, LinkPeers: []peer.ID{f.host.ID()}, NoListen: true})
	be, err := backend.New(h, []peer.AddrInfo{f.info()}, opts...)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { be.Close() })
	for p, hd := range handlers {
		be.SetStreamHandler(p, hd)
	}
	return be, h
}

// newPeer starts a plain host of the outside world, connected to the
// balancer.
func (f *fixture) newPeer() host.Host {
	f.t.Helper()
	h := testnet.NewHost(f.t, f.tr, testnet.Options{})
	testnet.Connect(f.t, h, f.host)
	return h
}

// waitServed polls d's identify view of the balancer until every protocol
// in protos is present (served true) or absent (served false).
func waitServed(t testing.TB, d host.Host, lb peer.ID, served bool, protos ...protocol.ID) {
	t.Helper()
	testnet.Eventually(t, 10*time.Second, func() bool {
		have, _ := d.Peerstore().GetProtocols(lb)
		for _, p := range protos {
			if slices.Contains(have, p) != served {
				return false
			}
		}
		return true
	}, "protocols %v served=%v in %s's view of the balancer", protos, served, d.ID())
}

// echo answers a stream with everything it read, after the writer's
// half-close, then closes.
func echo(s network.Stream) {
	defer s.Close()
	data, err := io.ReadAll(s)
	if err != nil {
		s.Reset()
		return
	}
	if _, err := s.Write(data); err != nil {
		s.Reset()
	}
}

// roundTrip writes payload on s, half-closes, and checks the echo.
func roundTrip(t *testing.T, s network.Stream, payload []byte) {
	t.Helper()
	_ = s.SetDeadline(time.Now().Add(30 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := s.Write(payload)
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo differs: got %d bytes, want %d", len(got), len(payload))
	}
	s.Close()
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// rawRequest sends one RoutingRequest from h as a scripted peer and returns
// the response.
func rawRequest(t testing.TB, h host.Host, lb peer.ID, req *pb.RoutingRequest) *pb.RoutingResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, lb, wire.RoutingRequestID)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if err := wire.WriteMsg(s, req); err != nil {
		t.Fatal(err)
	}
	var resp pb.RoutingResponse
	if err := wire.NewReader(s).ReadMsg(&resp); err != nil {
		t.Fatalf("reading routing response: %v", err)
	}
	return &resp
}

// eachTransport runs f as a subtest over TCP and over QUIC.
func eachTransport(t *testing.T, f func(t *testing.T, tr testnet.Transport)) {
	for _, tr := range testnet.Transports {
		t.Run(string(tr), func(t *testing.T) { f(t, tr) })
	}
}

// waitRegistered polls until be's first balancer has granted protos.
func waitRegistered(t testing.TB, be *backend.Backend, protos ...protocol.ID) {
	t.Helper()
	testnet.Eventually(t, 10*time.Second, func() bool {
		st := be.Status()[0]
		for _, p := range protos {
			if !slices.Contains(st.Protocols, p) {
				return false
			}
		}
		return true
	}, "backend registered %v", protos)
}

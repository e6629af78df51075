// Package lbtest sets up a balancer and its backends in one test process,
// on real hosts from package testnet: a balancer that allows the backends
// it is given, backends of package backend connected to it, and plain peers
// of the outside world. The tests of balancer, backend and admin share it.
package lbtest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/proto"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// Identity is a backend's key and peer ID, made before its host so that a
// balancer can allow it first.
type Identity struct {
	Key crypto.PrivKey
	ID  peer.ID
}

// NewIdentity makes a new Ed25519 identity.
func NewIdentity(t testing.TB) Identity {
	k, id := testnet.Key(t)
	return Identity{k, id}
}

// IDs returns the peer IDs of ids.
func IDs(ids []Identity) []peer.ID {
	var out []peer.ID
	for _, a := range ids {
		out = append(out, a.ID)
	}
	return out
}

// Fixture is a balancer on a real host.
type Fixture struct {
	T         testing.TB
	Transport testnet.Transport
	Host      host.Host
	LB        *balancer.Balancer
	// BackendOptions are given to every backend NewBackend starts, before
	// its own.
	BackendOptions []backend.Option
}

// Host starts a host for a balancer that allows the backends allowed: over
// tr, with ping disabled (so that ping can be routed to a backend) and the
// balancer protocol's limits raised for the backends, extra options last.
func Host(t testing.TB, tr testnet.Transport, allowed []Identity, extra ...libp2p.Option) host.Host {
	t.Helper()
	return testnet.NewHost(t, tr, testnet.Options{LinkPeers: IDs(allowed), Extra: append([]libp2p.Option{libp2p.Ping(false)}, extra...)})
}

// New starts a balancer on a new Host that allows the given backends any
// protocol, unless opts say otherwise. It is closed when the test ends.
func New(t testing.TB, tr testnet.Transport, allowed []Identity, opts ...balancer.Option) *Fixture {
	t.Helper()
	return On(t, tr, Host(t, tr, allowed), allowed, opts...)
}

// On is New on a host of the caller's, made with Host.
func On(t testing.TB, tr testnet.Transport, h host.Host, allowed []Identity, opts ...balancer.Option) *Fixture {
	t.Helper()
	for _, a := range allowed {
		opts = append([]balancer.Option{balancer.WithAllow(a.ID)}, opts...)
	}
	lb, err := balancer.New(h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	return &Fixture{T: t, Transport: tr, Host: h, LB: lb}
}

// Info returns the balancer host's peer ID and addresses.
func (f *Fixture) Info() peer.AddrInfo { return testnet.Info(f.Host) }

// NewBackend starts a backend with identity who on a host that only dials,
// connected to the balancer and serving handlers. Both are closed when the
// test ends.
func (f *Fixture) NewBackend(who Identity, handlers map[protocol.ID]network.StreamHandler, opts ...backend.Option) (*backend.Backend, host.Host) {
	f.T.Helper()
	h := testnet.NewHost(f.T, f.Transport, testnet.Options{Key: who.Key, LinkPeers: []peer.ID{f.Host.ID()}, NoListen: true})
	be, err := backend.New(h, []peer.AddrInfo{f.Info()}, append(slices.Clone(f.BackendOptions), opts...)...)
	if err != nil {
		f.T.Fatal(err)
	}
	f.T.Cleanup(func() { be.Close() })
	for p, hd := range handlers {
		be.SetStreamHandler(p, hd)
	}
	return be, h
}

// NewPeer starts a plain host of the outside world, connected to the
// balancer.
func (f *Fixture) NewPeer() host.Host {
	f.T.Helper()
	h := testnet.NewHost(f.T, f.Transport, testnet.Options{})
	testnet.Connect(f.T, h, f.Host)
	return h
}

// WaitServed polls d's identify view of the balancer lb until every protocol
// in protos is present (served true) or absent (served false).
func WaitServed(t testing.TB, d host.Host, lb peer.ID, served bool, protos ...protocol.ID) {
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

// WaitRegistered polls until be's first balancer has granted protos.
func WaitRegistered(t testing.TB, be *backend.Backend, protos ...protocol.ID) {
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

// RawRequest sends one RoutingRequest from h to the balancer lb as a
// scripted peer, and returns the response.
func RawRequest(t testing.TB, h host.Host, lb peer.ID, req *pb.RoutingRequest) *pb.RoutingResponse {
	t.Helper()
	var resp pb.RoutingResponse
	Ask(t, h, lb, wire.RoutingRequestID, req, &resp)
	return &resp
}

// Ask opens a stream for proto from h to p, writes req, and reads one
// message into resp, as a peer scripted at the wire level does. It fails
// the test on any error.
func Ask(t testing.TB, h host.Host, p peer.ID, proto protocol.ID, req, resp proto.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, p, proto)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if err := wire.WriteMsg(s, req); err != nil {
		t.Fatal(err)
	}
	if err := wire.NewReader(s).ReadMsg(resp); err != nil {
		t.Fatalf("reading the response to %s: %v", proto, err)
	}
}

// EchoOnce opens a stream from d to the balancer on proto and round-trips
// payload through it (testnet.RoundTrip); it needs no testing.T, for use
// from many goroutines.
func (f *Fixture) EchoOnce(d host.Host, proto protocol.ID, payload []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := d.NewStream(ctx, f.Host.ID(), proto)
	if err != nil {
		return err
	}
	return testnet.RoundTrip(s, payload)
}

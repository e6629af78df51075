package balancer_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// loopbackTargets lets the balancer dial outbound targets on loopback, where
// every test's peers listen; the default dial policy refuses loopback.
var loopbackTargets = balancer.WithDialPolicy(balancer.DialPolicy{Loopback: true})

// rawOutbound sends one outbound request from h, a scripted backend, and
// returns the answer and the stream (open after OK).
func rawOutbound(t testing.TB, h host.Host, lbID peer.ID, req *pb.Forward) (*pb.ForwardResponse, network.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, lbID, wire.ForwardID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Reset() })
	_ = s.SetDeadline(time.Now().Add(20 * time.Second))
	if err := wire.WriteMsg(s, req); err != nil {
		t.Fatal(err)
	}
	var resp pb.ForwardResponse
	if err := wire.NewReader(s).ReadMsg(&resp); err != nil {
		t.Fatalf("reading the forward response: %v", err)
	}
	return &resp, s
}

// TestOutboundControlProtocols (issue 11, item 1): a backend allowed any
// protocol, or a grant that covers them, still cannot open the balancer
// host's own control protocols to a remote peer: identify push would
// rewrite what the peer believes of the balancer. Ping stays allowed.
func TestOutboundControlProtocols(t *testing.T) {
	for _, grant := range [][]string{nil, {"*"}, {"/*"}, {"/libp2p/*", "/ipfs/*"}} {
		t.Run(strings.Join(append([]string{"grant"}, grant...), " "), func(t *testing.T) {
			a := lbtest.NewIdentity(t)
			f := lbtest.New(t, testnet.TCP, nil, balancer.WithAllow(a.ID, grant...))
			lbID := f.Host.ID()
			ah := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{lbID}})
			testnet.Connect(t, ah, f.Host)
			e := f.NewPeer() // connected: no dial, so only the protocol rule is tested
			var pushed atomic.Int64
			e.SetStreamHandler("/libp2p/dcutr", func(s network.Stream) { pushed.Add(1); s.Reset() })
			for _, p := range []string{"/ipfs/id/push/1.0.0", "/ipfs/id/1.0.0", "/p2p/id/delta/1.0.0",
				"/libp2p/balancer/forward", "/libp2p/balancer/routing-request", "/libp2p/autonat/1.0.0",
				"/libp2p/autonat/2/dial-request", "/libp2p/dcutr", "/libp2p/circuit/relay/0.2.0/hop", "/libp2p/circuit/relay/0.2.0/stop"} {
				if len(grant) == 2 && !strings.HasPrefix(p, "/libp2p/") && !strings.HasPrefix(p, "/ipfs/") {
					continue
				}
				resp, _ := rawOutbound(t, ah, lbID, &pb.Forward{Peer: []byte(e.ID()), Protocols: []string{p}})
				if resp.Status != pb.Status_PERMISSION_DENIED {
					t.Errorf("outbound on %s: %v %q, want PERMISSION_DENIED", p, resp.Status, resp.Text)
				}
			}
			if pushed.Load() != 0 {
				t.Fatal("the remote peer received a control protocol stream from the balancer")
			}
			resp, s := rawOutbound(t, ah, lbID, &pb.Forward{Peer: []byte(e.ID()), Protocols: []string{"/ipfs/ping/1.0.0"}})
			if resp.Status != pb.Status_OK {
				t.Fatalf("outbound ping: %v %q, want OK", resp.Status, resp.Text)
			}
			s.Reset()
		})
	}
}

// TestBackendToBackendForgery (issue 11, item 1): backend A asks for an
// outbound stream to backend B on /libp2p/balancer/forward, which B would
// trust as coming from its balancer, and then writes a Forward naming a
// remote peer of its choice. Refused, and B's handler never runs; an
// outbound stream to B on any other protocol is refused too unless
// WithBackendToBackend is set, and even then the forward protocol is not.
func TestBackendToBackendForgery(t *testing.T) {
	for _, b2b := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "backend-to-backend"}[b2b], func(t *testing.T) {
			a, b := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
			f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a, b}, balancer.WithBackendToBackend(b2b))
			lbID := f.Host.ID()
			ah := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{lbID}})
			testnet.Connect(t, ah, f.Host)
			var served, direct atomic.Int64
			forged := make(chan peer.ID, 4)
			be, bh := f.NewBackend(b, map[protocol.ID]network.StreamHandler{"/svc": func(s network.Stream) {
				served.Add(1)
				forged <- s.Conn().RemotePeer()
				s.Reset()
			}})
			bh.SetStreamHandler("/direct", func(s network.Stream) { direct.Add(1); testnet.Echo(s) })
			lbtest.WaitRegistered(t, be, "/svc")

			resp, s := rawOutbound(t, ah, lbID, &pb.Forward{Peer: []byte(b.ID), Protocols: []string{string(wire.ForwardID)}})
			if resp.Status == pb.Status_OK {
				// The attack: a Forward naming a peer A made up.
				victim := lbtest.NewIdentity(t).ID
				_ = wire.WriteMsg(s, &pb.Forward{Peer: []byte(victim), Protocols: []string{"/svc"}})
				var r pb.ForwardResponse
				_ = wire.NewReader(s).ReadMsg(&r)
				t.Fatalf("A reached B on the forward protocol; B answered %v to a forged Forward", r.Status)
			}
			if resp.Status != pb.Status_PERMISSION_DENIED {
				t.Fatalf("outbound to B on the forward protocol: %v %q, want PERMISSION_DENIED", resp.Status, resp.Text)
			}
			resp, s = rawOutbound(t, ah, lbID, &pb.Forward{Peer: []byte(b.ID), Protocols: []string{"/direct"}})
			if !b2b {
				if resp.Status != pb.Status_PERMISSION_DENIED {
					t.Fatalf("outbound to a backend: %v %q, want PERMISSION_DENIED", resp.Status, resp.Text)
				}
				if direct.Load() != 0 {
					t.Fatal("B's direct handler ran")
				}
			} else {
				if resp.Status != pb.Status_OK {
					t.Fatalf("outbound to a backend with backend-to-backend on: %v %q", resp.Status, resp.Text)
				}
				testnet.CheckRoundTrip(t, s, []byte("b2b"))
			}
			if served.Load() != 0 {
				t.Fatalf("B's handler ran for a remote peer %s that A named", <-forged)
			}
		})
	}
}

// gatedFixture is newFixture on a host built with a DialGater for policy,
// as the daemon builds it, and the balancer given the same policy.
func gatedFixture(t testing.TB, policy balancer.DialPolicy, allowed []lbtest.Identity, opts ...balancer.Option) *lbtest.Fixture {
	t.Helper()
	h := lbtest.Host(t, testnet.TCP, allowed, libp2p.ConnectionGater(&balancer.DialGater{Policy: policy}))
	return lbtest.On(t, testnet.TCP, h, allowed, append(opts, balancer.WithDialPolicy(policy))...)
}

// TestDialPolicy (issue 11, item 2): under the default policy a backend
// cannot make the balancer dial loopback, neither with addresses it names
// nor with addresses the balancer learned from identify, and the refusal
// does not say whether the port was open; the same request succeeds when
// the policy allows loopback.
func TestDialPolicy(t *testing.T) {
	t.Run("default refuses", func(t *testing.T) {
		a := lbtest.NewIdentity(t)
		f := gatedFixture(t, balancer.DefaultDialPolicy(), []lbtest.Identity{a})
		lbID := f.Host.ID()
		ah := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{lbID}})
		testnet.Connect(t, ah, f.Host)
		e := testnet.NewHost(t, testnet.TCP, testnet.Options{})
		var reached atomic.Int64
		e.SetStreamHandler("/e", func(s network.Stream) { reached.Add(1); testnet.Echo(s) })
		open := e.Addrs()[0]
		closedPort := closedLoopbackAddr(t)

		// Named addresses: one open port, one closed; the answer must
		// not tell them apart.
		var texts []string
		for _, addr := range []ma.Multiaddr{open, closedPort} {
			resp, _ := rawOutbound(t, ah, lbID, &pb.Forward{Peer: []byte(e.ID()), Protocols: []string{"/e"}, Addrs: [][]byte{addr.Bytes()}})
			if resp.Status != pb.Status_DIAL_FAILED {
				t.Fatalf("outbound to %s: %v %q, want DIAL_FAILED", addr, resp.Status, resp.Text)
			}
			texts = append(texts, strings.ReplaceAll(resp.Text, e.ID().String(), "E"))
		}
		if texts[0] != texts[1] || !strings.Contains(texts[0], "loopback") || strings.Contains(texts[0], "refused") || strings.Contains(texts[0], "127.0.0.1") {
			t.Fatalf("DIAL_FAILED texts for an open and a closed port: %q, %q; want the same text naming the policy, no socket error", texts[0], texts[1])
		}

		// Learned addresses: E connected once, so the balancer's
		// peerstore holds its loopback addresses from identify.
		testnet.Connect(t, e, f.Host)
		testnet.Eventually(t, 10*time.Second, func() bool {
			protos, _ := f.Host.Peerstore().GetProtocols(e.ID())
			return len(protos) > 0
		}, "identify of E by the balancer")
		_ = e.Network().ClosePeer(lbID)
		testnet.Eventually(t, 10*time.Second, func() bool {
			return f.Host.Network().Connectedness(e.ID()) != network.Connected
		}, "E disconnected")
		if len(f.Host.Peerstore().Addrs(e.ID())) == 0 {
			t.Fatal("the balancer forgot E's addresses: the test would prove nothing")
		}
		resp, _ := rawOutbound(t, ah, lbID, &pb.Forward{Peer: []byte(e.ID()), Protocols: []string{"/e"}})
		if resp.Status != pb.Status_DIAL_FAILED || strings.Contains(resp.Text, "connection refused") {
			t.Fatalf("outbound to E's learned loopback addresses: %v %q, want DIAL_FAILED by policy", resp.Status, resp.Text)
		}
		if reached.Load() != 0 {
			t.Fatal("E was reached")
		}
	})
	t.Run("loopback opted in", func(t *testing.T) {
		a := lbtest.NewIdentity(t)
		f := gatedFixture(t, balancer.DialPolicy{Loopback: true}, []lbtest.Identity{a})
		lbID := f.Host.ID()
		ah := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{lbID}})
		testnet.Connect(t, ah, f.Host)
		e := testnet.NewHost(t, testnet.TCP, testnet.Options{})
		e.SetStreamHandler("/e", testnet.Echo)
		resp, s := rawOutbound(t, ah, lbID, &pb.Forward{Peer: []byte(e.ID()), Protocols: []string{"/e"}, Addrs: [][]byte{e.Addrs()[0].Bytes()}})
		if resp.Status != pb.Status_OK {
			t.Fatalf("outbound with loopback allowed: %v %q", resp.Status, resp.Text)
		}
		testnet.CheckRoundTrip(t, s, []byte("allowed"))
	})
}

// closedLoopbackAddr returns a TCP address on loopback where nothing
// listens: a host's port, after the host closed.
func closedLoopbackAddr(t *testing.T) ma.Multiaddr {
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	a := h.Addrs()[0]
	h.Close()
	return a
}

// TestDialRate (issue 11, item 2): one backend's requests that need a dial
// are rate limited; requests to a connected peer and another backend's
// requests are not.
func TestDialRate(t *testing.T) {
	a, b := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	f := gatedFixture(t, balancer.DialPolicy{DialsPerSecondPerBackend: 0.1}, []lbtest.Identity{a, b})
	lbID := f.Host.ID()
	ah := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{lbID}})
	bh := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: b.Key, LinkPeers: []peer.ID{lbID}})
	testnet.Connect(t, ah, f.Host)
	testnet.Connect(t, bh, f.Host)
	unknown := func() []byte { return []byte(lbtest.NewIdentity(t).ID) }
	if resp, _ := rawOutbound(t, ah, lbID, &pb.Forward{Peer: unknown(), Protocols: []string{"/x"}}); resp.Status != pb.Status_DIAL_FAILED {
		t.Fatalf("first dial: %v %q, want DIAL_FAILED (no address)", resp.Status, resp.Text)
	}
	if resp, _ := rawOutbound(t, ah, lbID, &pb.Forward{Peer: unknown(), Protocols: []string{"/x"}}); resp.Status != pb.Status_RESOURCE_LIMIT_EXCEEDED {
		t.Fatalf("second dial within 10 s: %v %q, want RESOURCE_LIMIT_EXCEEDED", resp.Status, resp.Text)
	}
	if resp, _ := rawOutbound(t, bh, lbID, &pb.Forward{Peer: unknown(), Protocols: []string{"/x"}}); resp.Status != pb.Status_DIAL_FAILED {
		t.Fatalf("another backend's dial: %v %q, want DIAL_FAILED", resp.Status, resp.Text)
	}
	e := f.NewPeer()
	e.SetStreamHandler("/e", testnet.Echo)
	resp, s := rawOutbound(t, ah, lbID, &pb.Forward{Peer: []byte(e.ID()), Protocols: []string{"/e"}})
	if resp.Status != pb.Status_OK {
		t.Fatalf("to a connected peer, over the dial rate: %v %q, want OK", resp.Status, resp.Text)
	}
	testnet.CheckRoundTrip(t, s, []byte("no dial"))
}

// TestDialPolicyAddrs: the classes of addresses each policy allows. No
// traffic: link-local and metadata addresses are judged, never dialled.
func TestDialPolicyAddrs(t *testing.T) {
	all := balancer.DialPolicy{Loopback: true, Private: true}
	g := &balancer.DialGater{Policy: all}
	never := []string{
		"/ip4/169.254.169.254/tcp/80", "/ip4/169.254.1.1/udp/4001/quic-v1", "/ip4/100.100.100.200/tcp/80",
		"/ip6/fe80::1/tcp/80", "/ip6/fd00:ec2::254/tcp/80", "/ip4/0.0.0.0/tcp/1", "/ip6/::/tcp/1",
		"/ip4/224.0.0.1/tcp/1", "/ip4/255.255.255.255/tcp/1", "/ip6/ff02::1/tcp/1",
		"/ip6/::ffff:169.254.169.254/tcp/80", "/ip6/64:ff9b::a9fe:a9fe/tcp/80",
	}
	for _, s := range never {
		if all.Allows(ma.StringCast(s)) || g.InterceptAddrDial("", ma.StringCast(s)) {
			t.Errorf("%s allowed with loopback and private on", s)
		}
	}
	cases := []struct {
		addr                string
		def, loop, priv, ok bool // default, Loopback, Private, both
	}{
		{"/ip4/8.8.8.8/tcp/4001", true, true, true, true},
		{"/ip6/2001:4860:4860::8888/udp/4001/quic-v1", true, true, true, true},
		{"/ip4/127.0.0.1/tcp/4001", false, true, false, true},
		{"/ip6/::1/tcp/4001", false, true, false, true},
		{"/ip6/::ffff:127.0.0.1/tcp/4001", false, true, false, true},
		{"/ip4/10.1.2.3/tcp/4001", false, false, true, true},
		{"/ip4/172.16.0.1/tcp/4001", false, false, true, true},
		{"/ip4/192.168.1.1/tcp/4001", false, false, true, true},
		{"/ip4/100.64.0.1/tcp/4001", false, false, true, true},
		{"/ip6/fd12::1/tcp/4001", false, false, true, true},
		{"/dns4/example.com/tcp/4001", true, true, true, true}, // judged once resolved
	}
	for _, c := range cases {
		a := ma.StringCast(c.addr)
		for _, p := range []struct {
			pol  balancer.DialPolicy
			want bool
		}{{balancer.DefaultDialPolicy(), c.def}, {balancer.DialPolicy{Loopback: true}, c.loop}, {balancer.DialPolicy{Private: true}, c.priv}, {all, c.ok}} {
			if got := p.pol.Allows(a); got != p.want {
				t.Errorf("%+v allows %s: %v, want %v", p.pol, c.addr, got, p.want)
			}
		}
	}
	if (&balancer.DialGater{}).InterceptAddrDial("", ma.StringCast("/dns4/localhost/tcp/1")) {
		t.Error("the gater allowed an unresolved DNS address")
	}
}

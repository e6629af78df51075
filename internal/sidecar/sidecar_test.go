package sidecar_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/sidecar"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// newHost starts a host over TCP on loopback, ping disabled, with the
// balancer protocol's limits raised for link.
func newHost(t *testing.T, key crypto.PrivKey, listen bool, link ...peer.ID) host.Host {
	t.Helper()
	return testnet.NewHost(t, testnet.TCP, testnet.Options{Key: key, NoListen: !listen, LinkPeers: link, Extra: []libp2p.Option{libp2p.Ping(false)}})
}

// newBalancer starts an in-process balancer with identity key that allows
// backend any protocol, and outbound streams to peers on loopback (which
// the default dial policy refuses).
func newBalancer(t *testing.T, key crypto.PrivKey, backend peer.ID) host.Host {
	t.Helper()
	return lbtest.On(t, testnet.TCP, newHost(t, key, true, backend), []lbtest.Identity{{ID: backend}},
		balancer.WithDialPolicy(balancer.DialPolicy{Loopback: true})).Host
}

func start(t *testing.T, cfg sidecar.Config) *sidecar.Sidecar {
	t.Helper()
	s, err := sidecar.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// roundTrip opens proto from d to lb, sends msg, half-closes and returns
// the answer.
func roundTrip(t *testing.T, d host.Host, lb peer.ID, proto protocol.ID, msg string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.NewStream(ctx, lb, proto)
	if err != nil {
		t.Fatalf("opening %s: %v", proto, err)
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(s, msg); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("reading %s: %v", proto, err)
	}
	s.Close()
	return string(got)
}

func TestInboundWithProxyHeader(t *testing.T) {
	key, id := testnet.Key(t)
	lb := newBalancer(t, nil, id)
	echo := testnet.StartTCPEcho(t, true)
	addr, headers := echo.Addr, echo.Headers
	start(t, sidecar.Config{Key: key, Balancers: []peer.AddrInfo{testnet.Info(lb)}, ProxyProtocol: true,
		Routes: []sidecar.Route{{Protocol: "/t/echo", Target: addr}}})
	d := newHost(t, nil, false)
	if err := d.Connect(context.Background(), testnet.Info(lb)); err != nil {
		t.Fatal(err)
	}
	lbtest.WaitServed(t, d, lb.ID(), true, "/t/echo")
	if got := roundTrip(t, d, lb.ID(), "/t/echo", "hello"); got != "hello" {
		t.Fatalf("echo %q", got)
	}
	h := <-headers
	dAddr := d.Network().ConnsToPeer(lb.ID())[0].LocalMultiaddr()
	port, _ := dAddr.ValueForProtocol(ma.P_TCP)
	if h.PeerID != d.ID() || h.Protocol != "/t/echo" || fmt.Sprint(h.Source.Port()) != port || !h.Source.Addr().IsLoopback() {
		t.Fatalf("header %+v; want D %s from port %s on /t/echo", h, d.ID(), port)
	}
	if h.Destination.String() != addr {
		t.Fatalf("header destination %v, want the service %s", h.Destination, addr)
	}
}

func TestOutbound(t *testing.T) {
	key, id := testnet.Key(t)
	lb := newBalancer(t, nil, id)
	e := newHost(t, nil, true)
	seen := make(chan peer.ID, 1)
	e.SetStreamHandler("/t/e2", func(s network.Stream) {
		seen <- s.Conn().RemotePeer()
		io.Copy(s, s)
		s.Close()
	})
	sc := start(t, sidecar.Config{Key: key, Balancers: []peer.AddrInfo{testnet.Info(lb)},
		Outbound: []sidecar.Outbound{{Listen: "127.0.0.1:0", Peer: e.ID(), Addrs: e.Addrs(), Protocols: []protocol.ID{"/t/e1", "/t/e2"}}}})
	c, err := net.Dial("tcp", sc.OutboundAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "to E")
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "to E" {
		t.Fatalf("read %q, %v", got, err)
	}
	if p := <-seen; p != lb.ID() {
		t.Fatalf("E saw %s, want the balancer %s", p, lb.ID())
	}
}

// TestSharedIdentity: two balancer instances with one key; the sidecar
// registers with both, and each routes to it.
func TestSharedIdentity(t *testing.T) {
	key, id := testnet.Key(t)
	lbKey, _ := testnet.Key(t)
	lb1, lb2 := newBalancer(t, lbKey, id), newBalancer(t, lbKey, id)
	addr := testnet.StartTCPEcho(t, false).Addr
	sc := start(t, sidecar.Config{Key: key, Balancers: []peer.AddrInfo{testnet.Info(lb1), testnet.Info(lb2)},
		Routes: []sidecar.Route{{Protocol: "/t/echo", Target: addr}}})
	testnet.Eventually(t, 10*time.Second, func() bool {
		st := sc.Status()
		return len(st) == 2 && len(st[0].Protocols) == 1 && len(st[1].Protocols) == 1
	}, "registration with both instances")
	for _, lb := range []host.Host{lb1, lb2} {
		d := newHost(t, nil, false)
		if err := d.Connect(context.Background(), testnet.Info(lb)); err != nil {
			t.Fatal(err)
		}
		lbtest.WaitServed(t, d, lb.ID(), true, "/t/echo")
		if got := roundTrip(t, d, lb.ID(), "/t/echo", "hi"); got != "hi" {
			t.Fatalf("echo %q", got)
		}
	}
}

// TestShutdown: Shutdown releases the routes at once and lets a stream in
// flight finish.
func TestShutdown(t *testing.T) {
	key, id := testnet.Key(t)
	lb := newBalancer(t, nil, id)
	addr := testnet.StartTCPEcho(t, false).Addr
	sc := start(t, sidecar.Config{Key: key, Balancers: []peer.AddrInfo{testnet.Info(lb)},
		Routes: []sidecar.Route{{Protocol: "/t/echo", Target: addr}}})
	d := newHost(t, nil, false)
	if err := d.Connect(context.Background(), testnet.Info(lb)); err != nil {
		t.Fatal(err)
	}
	lbtest.WaitServed(t, d, lb.ID(), true, "/t/echo")
	s, err := d.NewStream(context.Background(), lb.ID(), "/t/echo")
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 5)
	io.WriteString(s, "first")
	if _, err := io.ReadFull(s, buf); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 5*time.Second, func() bool { return sc.ActiveStreams() == 1 }, "the stream to be bridged")
	done := make(chan error, 1)
	go func() { done <- sc.Shutdown(context.Background()) }()
	lbtest.WaitServed(t, d, lb.ID(), false, "/t/echo")
	io.WriteString(s, "second")
	s.CloseWrite()
	rest, err := io.ReadAll(s)
	if err != nil || string(rest) != "second" {
		t.Fatalf("after Shutdown began: read %q, %v", rest, err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the stream ended")
	}
}

func TestParse(t *testing.T) {
	_, id := testnet.Key(t)
	r, err := sidecar.ParseRoute("/echo/1.0.0=127.0.0.1:7000")
	if err != nil || r != (sidecar.Route{Protocol: "/echo/1.0.0", Target: "127.0.0.1:7000"}) {
		t.Fatalf("ParseRoute: %+v, %v", r, err)
	}
	for _, bad := range []string{"/echo", "echo=127.0.0.1:1", "/echo=127.0.0.1"} {
		if _, err := sidecar.ParseRoute(bad); err == nil {
			t.Errorf("ParseRoute(%q) accepted", bad)
		}
	}
	o, err := sidecar.ParseOutbound("127.0.0.1:9000=" + id.String() + "/a/1.0.0,/b/1.0.0")
	want := sidecar.Outbound{Listen: "127.0.0.1:9000", Peer: id, Protocols: []protocol.ID{"/a/1.0.0", "/b/1.0.0"}}
	if err != nil || !reflect.DeepEqual(o, want) {
		t.Fatalf("ParseOutbound: %+v, %v", o, err)
	}
	o, err = sidecar.ParseOutbound("127.0.0.1:0=/ip4/10.0.0.1/udp/4001/quic-v1/p2p/" + id.String() + "/a/1.0.0")
	if err != nil || o.Peer != id || len(o.Addrs) != 1 || o.Addrs[0].String() != "/ip4/10.0.0.1/udp/4001/quic-v1" || !reflect.DeepEqual(o.Protocols, []protocol.ID{"/a/1.0.0"}) {
		t.Fatalf("ParseOutbound with an address: %+v, %v", o, err)
	}
	for _, bad := range []string{"127.0.0.1:1=" + id.String(), "nohost=" + id.String() + "/a", "127.0.0.1:1=nope/a", "127.0.0.1:1=/ip4/1.2.3.4/tcp/1/a", "127.0.0.1:1=" + id.String() + "/a,b"} {
		if _, err := sidecar.ParseOutbound(bad); err == nil {
			t.Errorf("ParseOutbound(%q) accepted", bad)
		}
	}
	ai, err := sidecar.ParseBalancer("/ip4/127.0.0.1/tcp/1/p2p/" + id.String() + ",/ip4/127.0.0.1/udp/1/quic-v1/p2p/" + id.String())
	if err != nil || ai.ID != id || len(ai.Addrs) != 2 {
		t.Fatalf("ParseBalancer: %+v, %v", ai, err)
	}
	_, other := testnet.Key(t)
	if _, err := sidecar.ParseBalancer("/ip4/127.0.0.1/tcp/1/p2p/" + id.String() + ",/ip4/127.0.0.1/tcp/2/p2p/" + other.String()); err == nil {
		t.Error("ParseBalancer accepted two peer IDs for one instance")
	}
}

// TestDNSNames: a --balancer DNS name. The test's DNS server lists the
// instances under /dnsaddr records that name /dns4 addresses (so both
// kinds of records are followed); the sidecar registers with every
// instance listed, follows an instance added and one removed within the
// resolve interval, and carries streams through an instance it found.
func TestDNSNames(t *testing.T) {
	const interval = 500 * time.Millisecond
	dns := testnet.NewDNS(t)
	key, id := testnet.Key(t)
	lbKey, lbID := testnet.Key(t)
	var lbs []host.Host
	for range 3 {
		lbs = append(lbs, newBalancer(t, lbKey, id))
	}
	// Instance i is lb<i>.test, an A record for 127.0.0.1, at its port.
	record := func(i int) string {
		port, err := lbs[i].Addrs()[0].ValueForProtocol(ma.P_TCP)
		if err != nil {
			t.Fatal(err)
		}
		dns.SetA(fmt.Sprintf("lb%d.test", i), net.IPv4(127, 0, 0, 1))
		return fmt.Sprintf("dnsaddr=/dns4/lb%d.test/tcp/%s/p2p/%s", i, port, lbID)
	}
	dns.SetTXT("_dnsaddr.lbs.test", record(0), record(1))
	addr := testnet.StartTCPEcho(t, false).Addr
	sc := start(t, sidecar.Config{Key: key, Names: []ma.Multiaddr{ma.StringCast("/dnsaddr/lbs.test")},
		Resolver: dns.Resolver(t), ResolveInterval: interval,
		Routes: []sidecar.Route{{Protocol: "/t/echo", Target: addr}}})

	// registeredWith says whether the instances in use are exactly want,
	// and each holds the route.
	registeredWith := func(want ...int) func() bool {
		return func() bool {
			ins := sc.Instances()
			if len(ins) != len(want) {
				return false
			}
			for _, i := range want {
				port, _ := lbs[i].Addrs()[0].ValueForProtocol(ma.P_TCP)
				found := false
				for _, in := range ins {
					p, _ := in.Addr.ValueForProtocol(ma.P_TCP)
					st := in.Backend.Status()
					found = found || (p == port && len(st) == 1 && len(st[0].Protocols) == 1)
				}
				if !found {
					return false
				}
			}
			return true
		}
	}
	testnet.Eventually(t, interval+5*time.Second, registeredWith(0, 1), "registration with instances 0 and 1")

	dns.SetTXT("_dnsaddr.lbs.test", record(1), record(2))
	changed := time.Now()
	testnet.Eventually(t, interval+5*time.Second, registeredWith(1, 2), "registration with instances 1 and 2 only")
	t.Logf("registrations followed the records in %v (interval %v)", time.Since(changed).Round(time.Millisecond), interval)
	testnet.Eventually(t, 10*time.Second, func() bool { return len(lbs[0].Network().ConnsToPeer(id)) == 0 },
		"the removed instance's connection closed")

	d := newHost(t, nil, false)
	if err := d.Connect(context.Background(), testnet.Info(lbs[2])); err != nil {
		t.Fatal(err)
	}
	lbtest.WaitServed(t, d, lbID, true, "/t/echo")
	if got := roundTrip(t, d, lbID, "/t/echo", "via DNS"); got != "via DNS" {
		t.Fatalf("echo %q", got)
	}
	if err := sc.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 10*time.Second, func() bool { return len(lbs[2].Network().ConnsToPeer(id)) == 0 },
		"every connection closed after Shutdown")
}

// TestAddBalancer: a --balancer DNS name is followed (Names), an address is
// one instance (Balancers), and a /dns4 name without a peer ID is refused.
func TestAddBalancer(t *testing.T) {
	_, id := testnet.Key(t)
	var c sidecar.Config
	for _, s := range []string{"/dnsaddr/lb.example", "/dns4/lb.example/udp/4242/quic-v1/p2p/" + id.String(), "/ip4/127.0.0.1/tcp/1/p2p/" + id.String()} {
		if err := c.AddBalancer(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if len(c.Names) != 2 || len(c.Balancers) != 1 {
		t.Fatalf("names %v, balancers %v: want the two names followed and the address as one instance", c.Names, c.Balancers)
	}
	if err := c.AddBalancer("/dns4/lb.example/tcp/4242"); err == nil {
		t.Fatal("a /dns4 name without /p2p accepted")
	}
	c.Routes = []sidecar.Route{{Protocol: "/x", Target: "127.0.0.1:1"}}
	c.ResolveInterval = -time.Second
	if err := c.Check(); err == nil {
		t.Fatal("a negative resolve interval accepted")
	}
}

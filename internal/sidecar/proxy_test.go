package sidecar_test

import (
	"context"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/internal/sidecar"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// hostOn starts a host that listens on addrs; relayed turns go-libp2p's
// circuit relay transport back on (node.New turns it off).
func hostOn(t *testing.T, relayed bool, link []peer.ID, addrs ...string) host.Host {
	t.Helper()
	key, _ := testnet.Key(t)
	cfg := node.Config{Key: key, LinkPeers: link, Options: []libp2p.Option{libp2p.Ping(false)}}
	if relayed {
		cfg.Options = append(cfg.Options, libp2p.EnableRelay())
	}
	for _, a := range addrs {
		cfg.Listen = append(cfg.Listen, ma.StringCast(a))
	}
	h, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// TestProxyHeaderOverQUIC: a remote peer that reached the balancer over
// QUIC is written as a STREAM source with its UDP port by default (nginx
// ignores the addresses of any other kind), and as DGRAM when the sidecar
// is told to.
func TestProxyHeaderOverQUIC(t *testing.T) {
	for _, dgram := range []bool{false, true} {
		key, id := testnet.Key(t)
		lb := hostOn(t, false, []peer.ID{id}, "/ip4/127.0.0.1/udp/0/quic-v1")
		b, err := balancer.New(lb, balancer.WithAllow(id))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		echo := testnet.StartTCPEcho(t, true)
		addr, headers := echo.Addr, echo.Headers
		start(t, sidecar.Config{Key: key, Balancers: []peer.AddrInfo{testnet.Info(lb)}, ProxyProtocol: true, ProxyProtocolDatagram: dgram,
			Routes: []sidecar.Route{{Protocol: "/t/echo", Target: addr}}})
		d := hostOn(t, false, nil)
		if err := d.Connect(context.Background(), testnet.Info(lb)); err != nil {
			t.Fatal(err)
		}
		lbtest.WaitServed(t, d, lb.ID(), true, "/t/echo")
		if got := roundTrip(t, d, lb.ID(), "/t/echo", "quic"); got != "quic" {
			t.Fatalf("echo %q", got)
		}
		h := <-headers
		udp, _ := d.Network().ConnsToPeer(lb.ID())[0].LocalMultiaddr().ValueForProtocol(ma.P_UDP)
		if h.PeerID != d.ID() || !h.Source.Addr().IsLoopback() || h.Source.Port() == 0 || udp != itoa(h.Source.Port()) {
			t.Fatalf("header %+v; want D %s from UDP port %s", h, d.ID(), udp)
		}
		if h.Datagram != dgram {
			t.Fatalf("datagram option %v: header says DGRAM %v", dgram, h.Datagram)
		}
	}
}

// TestProxyHeaderRelayed: a remote peer that reached the balancer through a
// circuit relay has no address of its own (the relay's would be a lie), so
// the header carries no address block (UNSPEC), only its peer ID, even with
// the datagram option on.
func TestProxyHeaderRelayed(t *testing.T) {
	key, id := testnet.Key(t)
	r := hostOn(t, false, nil, "/ip4/127.0.0.1/tcp/0")
	if _, err := relay.New(r); err != nil {
		t.Fatal(err)
	}
	lb := hostOn(t, true, []peer.ID{id}, "/ip4/127.0.0.1/tcp/0")
	b, err := balancer.New(lb, balancer.WithAllow(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := lb.Connect(ctx, testnet.Info(r)); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Reserve(ctx, lb, testnet.Info(r)); err != nil {
		t.Fatal(err)
	}
	echo := testnet.StartTCPEcho(t, true)
	addr, headers := echo.Addr, echo.Headers
	start(t, sidecar.Config{Key: key, Balancers: []peer.AddrInfo{testnet.Info(lb)}, ProxyProtocol: true, ProxyProtocolDatagram: true,
		Routes: []sidecar.Route{{Protocol: "/t/echo", Target: addr}}})

	d := hostOn(t, true, nil)
	circuit := ma.StringCast(r.Addrs()[0].String() + "/p2p/" + r.ID().String() + "/p2p-circuit")
	if err := d.Connect(ctx, peer.AddrInfo{ID: lb.ID(), Addrs: []ma.Multiaddr{circuit}}); err != nil {
		t.Fatal(err)
	}
	conns := d.Network().ConnsToPeer(lb.ID())
	if len(conns) != 1 || !conns[0].Stat().Limited {
		t.Fatalf("D's connections to the balancer: %v, want one relayed", conns)
	}
	s, err := d.NewStream(network.WithAllowLimitedConn(ctx, "test"), lb.ID(), "/t/echo")
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write([]byte("relayed")); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	buf := make([]byte, 7)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "relayed" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	s.Close()
	h := <-headers
	if h.PeerID != d.ID() || h.Source.IsValid() || h.Datagram || h.Protocol != "/t/echo" {
		t.Fatalf("header %+v; want D %s with no address", h, d.ID())
	}
}

func itoa(n uint16) string { return strconv.Itoa(int(n)) }

package node_test

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

func newNode(t *testing.T, listen ...string) (host.Host, []ma.Multiaddr) {
	t.Helper()
	k, _ := testnet.Key(t)
	var addrs []ma.Multiaddr
	for _, l := range listen {
		addrs = append(addrs, ma.StringCast(l))
	}
	h, err := node.New(node.Config{Key: k, Listen: addrs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h, addrs
}

// TestListenErrorNamesAddress: a port already in use fails New with an
// error that names the address, without the swarm's wrapping; the
// listener does not share the port (no SO_REUSEPORT).
func TestListenErrorNamesAddress(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	addr := "/ip4/127.0.0.1/tcp/" + strings.TrimPrefix(l.Addr().String(), "127.0.0.1:")
	k, _ := testnet.Key(t)
	h, err := node.New(node.Config{Key: k, Listen: []ma.Multiaddr{ma.StringCast(addr)}})
	if err == nil {
		h.Close()
		t.Fatalf("New listened on %s, which is in use", addr)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "listen "+addr+": ") || !strings.Contains(msg, "address already in use") || strings.Contains(msg, "failed to listen on any addresses") {
		t.Fatalf("error %q, want \"listen %s: ...address already in use\"", msg, addr)
	}
}

// TestNewNeedsKey: a Config without an identity is refused.
func TestNewNeedsKey(t *testing.T) {
	if h, err := node.New(node.Config{}); err == nil {
		h.Close()
		t.Fatal("New without a key succeeded")
	}
}

// TestAddrs: Addrs lists the addresses in the order of the listen list, by
// transport, each ending in the host's /p2p/ component, and a peer can
// reach the host on them.
func TestAddrs(t *testing.T) {
	h, listen := newNode(t, "/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0")
	addrs, err := node.Addrs(h, listen)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 2 {
		t.Fatalf("Addrs = %v, want one QUIC and one TCP address", addrs)
	}
	for i, want := range []string{"/udp/", "/tcp/"} {
		ai, err := peer.AddrInfoFromP2pAddr(addrs[i])
		if err != nil || ai.ID != h.ID() {
			t.Fatalf("address %s does not end in /p2p/%s: %v", addrs[i], h.ID(), err)
		}
		if !strings.Contains(addrs[i].String(), want) {
			t.Fatalf("address %d is %s, want the %s one (listen order)", i, addrs[i], want)
		}
		// Each address works, as printed: parsed back, and dialled.
		parsed, err := node.ParseAddrInfo(addrs[i].String())
		if err != nil {
			t.Fatal(err)
		}
		other, _ := newNode(t)
		if err := other.Connect(context.Background(), *parsed); err != nil {
			t.Fatalf("connecting to %s: %v", addrs[i], err)
		}
	}
	h2, listen2 := newNode(t, "/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1")
	addrs2, err := node.Addrs(h2, listen2)
	if err != nil || len(addrs2) != 2 || !strings.Contains(addrs2[0].String(), "/tcp/") {
		t.Fatalf("with TCP listed first, Addrs = %v, %v; want the TCP address first", addrs2, err)
	}
}

// TestParseAddrInfo: the printed form parses back; a multiaddr without a
// peer ID, or not a multiaddr at all, is refused with the input quoted.
func TestParseAddrInfo(t *testing.T) {
	_, id := testnet.Key(t)
	ai, err := node.ParseAddrInfo("/ip4/127.0.0.1/tcp/4001/p2p/" + id.String())
	if err != nil || ai.ID != id || len(ai.Addrs) != 1 || ai.Addrs[0].String() != "/ip4/127.0.0.1/tcp/4001" {
		t.Fatalf("ParseAddrInfo = %+v, %v", ai, err)
	}
	for _, bad := range []string{"/ip4/127.0.0.1/tcp/4001", "not a multiaddr"} {
		if _, err := node.ParseAddrInfo(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("ParseAddrInfo(%q) = %v, want an error that quotes it", bad, err)
		}
	}
}

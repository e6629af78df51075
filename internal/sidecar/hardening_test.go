package sidecar_test

import (
	"errors"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/internal/sidecar"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// TestOutboundOffLoopback: an outbound listener lets whoever reaches it
// speak as the balancer's peer ID, so one off loopback is refused unless
// OutboundPublic says the operator meant it. With it, a connection to the
// listener (over loopback) is carried through as usual.
func TestOutboundOffLoopback(t *testing.T) {
	key, id := testnet.Key(t)
	lb := newBalancer(t, nil, id)
	e := newHost(t, nil, true)
	e.SetStreamHandler("/t/e", func(s network.Stream) {
		io.Copy(s, s)
		s.Close()
	})
	out := func(listen string) []sidecar.Outbound {
		return []sidecar.Outbound{{Listen: listen, Peer: e.ID(), Addrs: e.Addrs(), Protocols: []protocol.ID{"/t/e"}}}
	}
	for _, listen := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0", "example.com:0"} {
		sc, err := sidecar.Start(sidecar.Config{Key: key, Balancers: []peer.AddrInfo{testnet.Info(lb)}, Outbound: out(listen)})
		if err == nil {
			sc.Close()
		}
		if !errors.Is(err, sidecar.ErrNotLoopback) {
			t.Errorf("outbound on %s: err = %v, want ErrNotLoopback", listen, err)
		}
	}
	for _, listen := range []string{"127.0.0.1:0", "localhost:0"} {
		sc := start(t, sidecar.Config{Key: key, Balancers: []peer.AddrInfo{testnet.Info(lb)}, Outbound: out(listen)})
		sc.Close()
	}
	sc := start(t, sidecar.Config{Key: key, Balancers: []peer.AddrInfo{testnet.Info(lb)}, Outbound: out("0.0.0.0:0"), OutboundPublic: true})
	port := sc.OutboundAddrs()[0].(*net.TCPAddr).Port
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "public")
	c.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "public" {
		t.Fatalf("read %q, %v", got, err)
	}
}

package sidecar_test

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/sidecar"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// TestForgedProxyHeaderThroughBalancer (issue 11, item 1, the sidecar
// path): backend A, allowed any protocol, points an outbound listener of its
// sidecar at backend B on /libp2p/balancer/forward and writes a Forward
// naming a peer and a source address of its choice. B's sidecar would trust
// it as coming from its balancer and hand its service a PROXY header with
// the forged peer ID and IP. The balancer refuses the stream, so A's
// connection is reset without a byte and B's service sees nothing, with
// backend-to-backend streams on or off.
func TestForgedProxyHeaderThroughBalancer(t *testing.T) {
	for _, b2b := range []bool{false, true} {
		aKey, aID := testnet.Key(t)
		bKey, bID := testnet.Key(t)
		lbh := newHost(t, nil, true, aID, bID)
		lb, err := balancer.New(lbh, balancer.WithAllow(aID), balancer.WithAllow(bID), balancer.WithBackendToBackend(b2b))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lb.Close() })
		echo := testnet.StartTCPEcho(t, true)
		addr, headers := echo.Addr, echo.Headers
		b := start(t, sidecar.Config{Key: bKey, Balancers: []peer.AddrInfo{testnet.Info(lbh)}, ProxyProtocol: true,
			Routes: []sidecar.Route{{Protocol: "/t/echo", Target: addr}}})
		testnet.Eventually(t, 10*time.Second, func() bool { st := b.Status(); return len(st) == 1 && len(st[0].Protocols) == 1 }, "B registered")
		a := start(t, sidecar.Config{Key: aKey, Balancers: []peer.AddrInfo{testnet.Info(lbh)},
			Outbound: []sidecar.Outbound{{Listen: "127.0.0.1:0", Peer: bID, Protocols: []protocol.ID{wire.ForwardID}}}})

		c, err := net.Dial("tcp", a.OutboundAddrs()[0].String())
		if err != nil {
			t.Fatal(err)
		}
		victim := newHost(t, nil, false).ID()
		_ = wire.WriteMsg(c, &pb.Forward{Peer: []byte(victim), Protocols: []string{"/t/echo"},
			Addrs: [][]byte{ma.StringCast("/ip4/203.0.113.7/tcp/1234").Bytes()}})
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		got, err := io.ReadAll(c)
		c.Close()
		if len(got) > 0 {
			select {
			case h := <-headers:
				t.Fatalf("backend-to-backend %v: B's service got a forged PROXY header: peer %s from %v", b2b, h.PeerID, h.Source)
			default:
				t.Fatalf("backend-to-backend %v: A's forged Forward was answered (%d bytes)", b2b, len(got))
			}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("backend-to-backend %v: A's connection was neither refused nor answered", b2b)
		}
		select {
		case h := <-headers:
			t.Fatalf("backend-to-backend %v: B's service got a header: peer %s from %v", b2b, h.PeerID, h.Source)
		default:
		}
	}
}

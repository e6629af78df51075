package link_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/internal/link"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

const preferProto protocol.ID = "/test/link"

// listenBoth starts a host on loopback over TCP and QUIC, as balancer serve's.
func listenBoth(t *testing.T) host.Host {
	key, _ := testnet.Key(t)
	h, err := node.New(node.Config{Key: key, Listen: []ma.Multiaddr{
		ma.StringCast("/ip4/127.0.0.1/tcp/0"), ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// dialOver starts a host with key over tr only, connected to lb, answering
// preferProto streams with its transport's name and then holding them until the
// test ends.
func dialOver(t *testing.T, lb host.Host, tr testnet.Transport, o testnet.Options) host.Host {
	h := testnet.NewHost(t, tr, o)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	h.SetStreamHandler(preferProto, func(s network.Stream) {
		s.Write([]byte(tr))
		<-done
		s.Reset()
	})
	testnet.Connect(t, h, lb)
	return h
}

func openVia(t *testing.T, o *link.Opener, lb host.Host, p peer.ID) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := o.Open(ctx, func() []network.Conn { return lb.Network().ConnsToPeer(p) }, preferProto)
	if err != nil {
		return "", err
	}
	buf := make([]byte, 4)
	n, err := io.ReadAtLeast(s, buf, 3)
	return string(buf[:n]), err
}

// TestPreferTCP: with a QUIC and a TCP connection to one peer (a backend
// host and its lane, sharing one key), streams go on the TCP one, which has
// no fixed stream cap.
func TestPreferTCP(t *testing.T) {
	lb := listenBoth(t)
	key, id := testnet.Key(t)
	dialOver(t, lb, testnet.QUIC, testnet.Options{Key: key, NoListen: true})
	dialOver(t, lb, testnet.TCP, testnet.Options{Key: key, NoListen: true})
	if n := len(lb.Network().ConnsToPeer(id)); n != 2 {
		t.Fatalf("%d connections to the peer, want 2", n)
	}
	var o link.Opener
	for i := 0; i < 5; i++ {
		got, err := openVia(t, &o, lb, id)
		if err != nil {
			t.Fatal(err)
		}
		if got != string(testnet.TCP) {
			t.Fatalf("stream %d went on the %s connection, want tcp", i, got)
		}
	}
}

// TestFull: with its only connection, over QUIC, at the cap of 256 streams,
// Open waits FullWait for room and then fails with ErrFull.
func TestFull(t *testing.T) {
	lb := listenBoth(t)
	be := dialOver(t, lb, testnet.QUIC, testnet.Options{NoListen: true, Unlimited: true})
	o := link.Opener{FullWait: 200 * time.Millisecond}
	for i := 0; i < 256; i++ {
		if _, err := openVia(t, &o, lb, be.ID()); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
	}
	start := time.Now()
	_, err := openVia(t, &o, lb, be.ID())
	if !errors.Is(err, link.ErrFull) {
		t.Fatalf("stream 257: %v, want ErrFull", err)
	}
	if d := time.Since(start); d < o.FullWait || d > 5*time.Second {
		t.Errorf("ErrFull after %v, want about FullWait (%v)", d, o.FullWait)
	}
}

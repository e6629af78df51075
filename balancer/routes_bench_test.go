package balancer_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"
	"github.com/multiformats/go-varint"
	"google.golang.org/protobuf/proto"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// Route table benchmarks, through the public protocol on real hosts (TCP,
// loopback): what a registration costs as a backend's routes grow, and
// whether routing a new inbound stream slows down as the table grows.
//
//	go test -run '^$' -bench Routes -benchmem ./balancer/

// rbSetup is a balancer, one backend A serving rbEcho through the backend
// library, and a remote peer D.
type rbSetup struct {
	lbHost host.Host
	a, d   host.Host
}

const rbEcho protocol.ID = "/bench/routes/echo/1.0.0"

func newRBSetup(b *testing.B) *rbSetup {
	b.Helper()
	aKey, aID := testnet.Key(b)
	lbKey, lbID := testnet.Key(b)
	lbh := testnet.NewHost(b, testnet.TCP, testnet.Options{Key: lbKey, LinkPeers: []peer.ID{aID}})
	lb, err := balancer.New(lbh, balancer.WithAllow(aID), balancer.WithLogger(rbQuiet()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { lb.Close() })
	ah := testnet.NewHost(b, testnet.TCP, testnet.Options{Key: aKey, LinkPeers: []peer.ID{lbID}})
	be, err := backend.New(ah, []peer.AddrInfo{testnet.Info(lbh)}, backend.WithLogger(rbQuiet()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Close() })
	be.SetStreamHandler(rbEcho, func(s network.Stream) {
		var one [1]byte
		if _, err := io.ReadFull(s, one[:]); err != nil {
			s.Reset()
			return
		}
		s.Write(one[:])
		s.Close()
	})
	testnet.Eventually(b, 10*time.Second, func() bool {
		st := be.Status()
		return len(st) > 0 && len(st[0].Protocols) > 0
	}, "backend not registered")
	d := testnet.NewHost(b, testnet.TCP, testnet.Options{})
	testnet.Connect(b, d, lbh)
	return &rbSetup{lbHost: lbh, a: ah, d: d}
}

// request sends one RoutingRequest from A's host, as the backend library
// does, and fails the benchmark unless it is granted.
func (s *rbSetup) request(b *testing.B, req *pb.RoutingRequest) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	str, err := s.a.NewStream(ctx, s.lbHost.ID(), wire.RoutingRequestID)
	if err != nil {
		b.Fatal(err)
	}
	defer str.Close()
	if err := wire.WriteMsg(str, req); err != nil {
		b.Fatal(err)
	}
	// The response lists every route of the backend; read it whatever its
	// size (see TestRoutingRequestCapacity in package wire).
	var resp pb.RoutingResponse
	if err := rbReadAny(str, &resp); err != nil {
		b.Fatal(err)
	}
	if resp.GetStatus() != pb.Status_OK {
		b.Fatalf("%v: %s", resp.GetStatus(), resp.GetText())
	}
}

func rbProtos(prefix string, from, to int) []string {
	out := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		// Short IDs: every route is advertised in the balancer's identify
		// message, whose 4 KiB budget holds about 400 IDs of 6 bytes.
		out = append(out, fmt.Sprintf("/%s%04d", prefix[:1], i))
	}
	return out
}

// grow registers n routes in requests of at most 250 protocols.
func (s *rbSetup) grow(b *testing.B, n int) {
	for k := 0; k < n; k += 250 {
		s.request(b, &pb.RoutingRequest{Protocols: rbProtos("table", k, min(k+250, n)), TtlSeconds: 600})
	}
}

// BenchmarkRoutesExtend times a request that extends 100 routes while the
// backend holds N routes in all.
func BenchmarkRoutesExtend(b *testing.B) {
	for _, n := range []int{100, 200, 300} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			s := newRBSetup(b)
			s.grow(b, n)
			req := &pb.RoutingRequest{Protocols: rbProtos("table", 0, 100), TtlSeconds: 600}
			b.ResetTimer()
			for b.Loop() {
				s.request(b, req)
			}
		})
	}
}

// BenchmarkRoutesAdd times a request that adds 100 new routes (released
// again, untimed) while the backend already holds N routes. Adding a route
// installs a stream handler on the balancer's host, which tells identify.
func BenchmarkRoutesAdd(b *testing.B) {
	for _, n := range []int{0, 100, 300 - 100} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			s := newRBSetup(b)
			s.grow(b, n)
			batch := rbProtos("added", 0, 100)
			b.ResetTimer()
			for b.Loop() {
				s.request(b, &pb.RoutingRequest{Protocols: batch, TtlSeconds: 600})
				b.StopTimer()
				s.request(b, &pb.RoutingRequest{Release: batch})
				b.StartTimer()
			}
		})
	}
}

// BenchmarkRoutesInbound times a new inbound stream D → LB → A (open,
// negotiate, one byte there and back) while the balancer routes N other
// protocols. Negotiation is eager (one multistream round trip), so the
// result does not depend on what identify told D about the balancer's
// protocols.
func BenchmarkRoutesInbound(b *testing.B) {
	for _, n := range []int{0, 100, 300} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			s := newRBSetup(b)
			s.grow(b, n)
			ctx := context.Background()
			b.ResetTimer()
			for b.Loop() {
				str, err := s.d.Network().NewStream(ctx, s.lbHost.ID())
				if err != nil {
					b.Fatal(err)
				}
				if err := msmux.SelectProtoOrFail(rbEcho, str); err != nil {
					b.Fatal(err)
				}
				if _, err := str.Write([]byte{1}); err != nil {
					b.Fatal(err)
				}
				var one [1]byte
				if _, err := io.ReadFull(str, one[:]); err != nil {
					b.Fatal(err)
				}
				str.Close()
			}
		})
	}
}

func rbQuiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// rbReadAny reads one length-prefixed message of any size up to 1 MiB.
func rbReadAny(r io.Reader, msg proto.Message) error {
	n, err := varint.ReadUvarint(wire.NewReader(r))
	if err != nil {
		return err
	}
	if n > 1<<20 {
		return fmt.Errorf("message of %d bytes", n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return err
	}
	return proto.Unmarshal(buf, msg)
}

package wire_test

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// The codec runs once or twice per forwarded stream (the Forward and its
// ForwardResponse), so its cost is part of every request/response stream's
// latency, and once per registration exchange, where a message may carry
// hundreds of protocol IDs.
//
//	go test -run '^$' -bench . -benchmem ./wire/

// forwardMsg is an inbound Forward as the balancer sends it: an Ed25519
// peer ID, one protocol, one TCP multiaddr.
func forwardMsg(b *testing.B) *pb.Forward {
	b.Helper()
	_, pub, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		b.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		b.Fatal(err)
	}
	addr := ma.StringCast("/ip4/203.0.113.7/tcp/4001")
	return &pb.Forward{Peer: []byte(id), Protocols: []string{"/ipfs/bitswap/1.2.0"}, Addrs: [][]byte{addr.Bytes()}}
}

// routingRequest carries n protocol IDs of a typical length (22 bytes).
func routingRequest(n int) *pb.RoutingRequest {
	req := &pb.RoutingRequest{TtlSeconds: 60}
	for i := range n {
		req.Protocols = append(req.Protocols, fmt.Sprintf("/app/proto-%05d/1.0.0", i))
	}
	return req
}

func BenchmarkWriteMsg(b *testing.B) {
	b.Run("Forward", func(b *testing.B) {
		msg := forwardMsg(b)
		b.ReportAllocs()
		for b.Loop() {
			if err := wire.WriteMsg(io.Discard, msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ForwardResponse", func(b *testing.B) {
		msg := &pb.ForwardResponse{Status: pb.Status_OK, Protocol: "/ipfs/bitswap/1.2.0"}
		b.ReportAllocs()
		for b.Loop() {
			if err := wire.WriteMsg(io.Discard, msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, n := range []int{1, 100, 600} {
		b.Run(fmt.Sprintf("RoutingRequest/%d", n), func(b *testing.B) {
			msg := routingRequest(n)
			b.ReportAllocs()
			for b.Loop() {
				if err := wire.WriteMsg(io.Discard, msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReadMsg reads from a bytes.Reader, which, like a libp2p stream,
// costs a call per Read: the Reader reads the length prefix a byte at a
// time so that it never consumes forwarded data.
func BenchmarkReadMsg(b *testing.B) {
	b.Run("Forward", func(b *testing.B) {
		var buf bytes.Buffer
		if err := wire.WriteMsg(&buf, forwardMsg(b)); err != nil {
			b.Fatal(err)
		}
		raw := buf.Bytes()
		r := bytes.NewReader(raw)
		b.SetBytes(int64(len(raw)))
		b.ReportAllocs()
		for b.Loop() {
			r.Reset(raw)
			var msg pb.Forward
			if err := wire.NewReader(r).ReadMsg(&msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ForwardResponse", func(b *testing.B) {
		var buf bytes.Buffer
		if err := wire.WriteMsg(&buf, &pb.ForwardResponse{Status: pb.Status_OK, Protocol: "/ipfs/bitswap/1.2.0"}); err != nil {
			b.Fatal(err)
		}
		raw := buf.Bytes()
		r := bytes.NewReader(raw)
		b.SetBytes(int64(len(raw)))
		b.ReportAllocs()
		for b.Loop() {
			r.Reset(raw)
			var msg pb.ForwardResponse
			if err := wire.NewReader(r).ReadMsg(&msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, n := range []int{1, 100, 600} {
		b.Run(fmt.Sprintf("RoutingRequest/%d", n), func(b *testing.B) {
			var buf bytes.Buffer
			if err := wire.WriteMsg(&buf, routingRequest(n)); err != nil {
				b.Fatal(err)
			}
			raw := buf.Bytes()
			r := bytes.NewReader(raw)
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(raw)
				var msg pb.RoutingRequest
				if err := wire.NewReader(r).ReadMsg(&msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestRoutingRequestCapacity records how many protocol IDs of a given
// length fit in one message under wire.MaxMessageSize: a request (or a
// response listing every route) with more is malformed. The balancer's
// default ProtocolsPerRequest (1024) and RoutesPerBackend (4096) are above
// this for any realistic protocol ID length.
func TestRoutingRequestCapacity(t *testing.T) {
	for _, n := range []int{600, 700} {
		var buf bytes.Buffer
		if err := wire.WriteMsg(&buf, routingRequest(n)); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d protocol IDs of 22 bytes: %d bytes (limit %d)", n, buf.Len(), wire.MaxMessageSize)
	}
}

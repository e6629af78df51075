package wire_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// fuzzMessages decodes data as a sequence of framed messages of one type,
// the way a handler reads a stream, and checks that the reader neither
// panics, nor reads past a message, nor accepts anything over the size cap.
func fuzzMessages(f *testing.F, newMsg func() proto.Message) {
	for _, seed := range [][]byte{
		nil,
		{0},
		{3, 0xff, 0xff, 0xff},
		{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},
		{0x81, 0x80, 0x01}, // 16385: one byte over the cap
	} {
		f.Add(seed)
	}
	var buf bytes.Buffer
	_ = wire.WriteMsg(&buf, &pb.RoutingRequest{Protocols: []string{"/a", "/b"}, TtlSeconds: 60, Release: []string{"/c"}, Weight: 2})
	_ = wire.WriteMsg(&buf, &pb.Forward{Peer: []byte("peer"), Protocols: []string{"/x"}, Addrs: [][]byte{{4, 127, 0, 0, 1}}})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		src := bytes.NewReader(data)
		r := wire.NewReader(src)
		for i := 0; i < 64; i++ {
			before := src.Len()
			msg := newMsg()
			err := r.ReadMsg(msg)
			consumed := before - src.Len()
			if consumed > wire.MaxMessageSize+10 {
				t.Fatalf("reader consumed %d bytes for one message, over the cap", consumed)
			}
			if err != nil {
				if errors.Is(err, wire.ErrMalformed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					return
				}
				t.Fatalf("unexpected error kind: %v", err)
			}
			// A message that decoded re-encodes within the cap.
			if proto.Size(msg) > wire.MaxMessageSize {
				t.Fatalf("decoded a message of %d bytes", proto.Size(msg))
			}
		}
	})
}

func FuzzRoutingRequest(f *testing.F) {
	fuzzMessages(f, func() proto.Message { return new(pb.RoutingRequest) })
}
func FuzzRoutingResponse(f *testing.F) {
	fuzzMessages(f, func() proto.Message { return new(pb.RoutingResponse) })
}
func FuzzForward(f *testing.F) { fuzzMessages(f, func() proto.Message { return new(pb.Forward) }) }
func FuzzForwardResponse(f *testing.F) {
	fuzzMessages(f, func() proto.Message { return new(pb.ForwardResponse) })
}

// FuzzValidateProtocol: the validator never panics, and what it accepts is
// within the documented shape.
func FuzzValidateProtocol(f *testing.F) {
	for _, s := range []string{"", "/", "/a/b/1.0.0", "no-slash", "/with space", "/tab\t", "/\n", "/é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if wire.ValidateProtocol(s) != nil {
			return
		}
		if len(s) == 0 || len(s) > wire.MaxProtocolLength || s[0] != '/' {
			t.Fatalf("accepted %q", s)
		}
		for i := 0; i < len(s); i++ {
			if s[i] <= ' ' || s[i] > '~' {
				t.Fatalf("accepted %q with byte %#x", s, s[i])
			}
		}
	})
}

package wire_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

func TestReaderStopsAtMessageEnd(t *testing.T) {
	var buf bytes.Buffer
	if err := wire.WriteMsg(&buf, &pb.Forward{Protocols: []string{"/a"}}); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("raw bytes")
	var msg pb.Forward
	if err := wire.NewReader(&buf).ReadMsg(&msg); err != nil {
		t.Fatal(err)
	}
	if got := msg.GetProtocols(); len(got) != 1 || got[0] != "/a" {
		t.Fatalf("protocols = %v", got)
	}
	if rest := buf.String(); rest != "raw bytes" {
		t.Fatalf("reader consumed stream data: left %q", rest)
	}
}

func TestReaderRejectsOversized(t *testing.T) {
	var buf bytes.Buffer
	big := &pb.Forward{Protocols: []string{strings.Repeat("x", wire.MaxMessageSize)}}
	if err := wire.WriteMsg(&buf, big); err != nil {
		t.Fatal(err)
	}
	err := wire.NewReader(&buf).ReadMsg(&pb.Forward{})
	if !errors.Is(err, wire.ErrMalformed) || !errors.Is(err, wire.ErrMessageTooLarge) {
		t.Fatalf("err = %v, want malformed and too large", err)
	}
}

func TestReaderMalformedAndTruncated(t *testing.T) {
	// A length of 3 followed by bytes that are not a valid protobuf.
	err := wire.NewReader(bytes.NewReader([]byte{3, 0xff, 0xff, 0xff})).ReadMsg(&pb.Forward{})
	if !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("garbled: err = %v, want ErrMalformed", err)
	}
	err = wire.NewReader(bytes.NewReader([]byte{10, 1, 2})).ReadMsg(&pb.Forward{})
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: err = %v, want ErrUnexpectedEOF", err)
	}
	err = wire.NewReader(bytes.NewReader(nil)).ReadMsg(&pb.Forward{})
	if err != io.EOF {
		t.Fatalf("empty: err = %v, want io.EOF", err)
	}
	overflow := bytes.Repeat([]byte{0xff}, 11)
	err = wire.NewReader(bytes.NewReader(overflow)).ReadMsg(&pb.Forward{})
	if !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("overflowing varint: err = %v, want ErrMalformed", err)
	}
}

func TestStatusErrorIs(t *testing.T) {
	err := error(wire.Errorf(pb.Status_REJECTED, "no handler for %s", "/x"))
	if !errors.Is(err, &wire.StatusError{Status: pb.Status_REJECTED}) {
		t.Fatal("errors.Is on the same status failed")
	}
	if errors.Is(err, &wire.StatusError{Status: pb.Status_DIAL_FAILED}) {
		t.Fatal("errors.Is matched a different status")
	}
	if want := "balancer: REJECTED: no handler for /x"; err.Error() != want {
		t.Fatalf("Error() = %q, want %q", err.Error(), want)
	}
}

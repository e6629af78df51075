package proxyproto_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/libp2p-balancer/libp2p-balancer/proxyproto"
)

func testPeer(t *testing.T) peer.ID {
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestWireBytes checks the encoding against bytes laid out by hand from
// section 2.2 of the specification.
func TestWireBytes(t *testing.T) {
	h := &proxyproto.Header{
		Source:      netip.MustParseAddrPort("192.0.2.1:4001"),
		Destination: netip.MustParseAddrPort("127.0.0.1:8080"),
		Protocol:    "/x",
	}
	got, err := h.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := hex.DecodeString("0d0a0d0a000d0a515549540a" + // signature
		"21" + "11" + "0011" + // PROXY, TCP over IPv4, 17 bytes follow
		"c0000201" + "7f000001" + "0fa1" + "1f90" + // addresses and ports
		"e10002" + "2f78") // TLV 0xE1 "/x"
	if !bytes.Equal(got, want) {
		t.Fatalf("encoded\n%x\nwant\n%x", got, want)
	}
}

func TestRoundTrip(t *testing.T) {
	id := testPeer(t)
	for _, h := range []proxyproto.Header{
		{Source: netip.MustParseAddrPort("10.1.2.3:5555"), Destination: netip.MustParseAddrPort("127.0.0.1:80"), PeerID: id, Protocol: "/echo/1.0.0"},
		{Source: netip.MustParseAddrPort("[2001:db8::1]:4001"), Destination: netip.MustParseAddrPort("[::1]:80"), PeerID: id},
		{PeerID: id, Protocol: "/p"}, // no address: UNSPEC
		{Source: netip.MustParseAddrPort("10.0.0.1:1"), TLVs: []proxyproto.TLV{{Type: 0xEA, Value: []byte("x")}}},
		{Source: netip.MustParseAddrPort("10.1.2.3:4001"), Destination: netip.MustParseAddrPort("127.0.0.1:80"), Datagram: true, PeerID: id},
		{Source: netip.MustParseAddrPort("[2001:db8::1]:4001"), Datagram: true},
	} {
		var buf bytes.Buffer
		if _, err := h.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		buf.WriteString("payload")
		got, err := proxyproto.Read(&buf)
		if err != nil {
			t.Fatalf("%+v: %v", h, err)
		}
		if got.Source != h.Source || got.Datagram != h.Datagram || got.PeerID != h.PeerID || got.Protocol != h.Protocol || len(got.TLVs) != len(h.TLVs) {
			t.Fatalf("read %+v, wrote %+v", got, h)
		}
		if h.Source.IsValid() && got.Destination.Addr().Is4() != h.Source.Addr().Is4() {
			t.Fatalf("destination %v of another family than the source %v", got.Destination, h.Source)
		}
		if rest := buf.String(); rest != "payload" {
			t.Fatalf("Read consumed connection data: %q left", rest)
		}
	}
}

func TestMixedFamilies(t *testing.T) {
	h := &proxyproto.Header{Source: netip.MustParseAddrPort("[2001:db8::1]:4001"), Destination: netip.MustParseAddrPort("127.0.0.1:80")}
	var buf bytes.Buffer
	h.WriteTo(&buf)
	got, err := proxyproto.Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got.Destination != netip.AddrPortFrom(netip.IPv6Unspecified(), 0) {
		t.Fatalf("destination %v, want [::]:0", got.Destination)
	}
}

func TestReadErrors(t *testing.T) {
	if _, err := proxyproto.Read(bytes.NewReader([]byte("GET / HTTP/1.1\r\n\r\n"))); !errors.Is(err, proxyproto.ErrNoHeader) {
		t.Fatalf("plain HTTP: err = %v, want ErrNoHeader", err)
	}
	truncated := append(append([]byte{}, proxyproto.Signature...), 0x21, 0x11, 0x00, 0x0c, 1, 2)
	if _, err := proxyproto.Read(bytes.NewReader(truncated)); err == nil {
		t.Fatal("truncated header accepted")
	}
	badTLV := append(append([]byte{}, proxyproto.Signature...), 0x21, 0x00, 0x00, 0x04, 0xe0, 0x00, 0x09, 'x')
	if _, err := proxyproto.Read(bytes.NewReader(badTLV)); err == nil {
		t.Fatal("overrunning TLV accepted")
	}
}

// TestDatagram: a source over QUIC (UDP) is written with the DGRAM
// transport only when Datagram is set (nginx ignores the addresses of a
// non-STREAM header, so it is a choice); an unknown source (a relayed
// peer) has no address block whatever Datagram says.
func TestDatagram(t *testing.T) {
	for _, c := range []struct {
		h   proxyproto.Header
		fam string
		n   string // length of what follows the fixed part, in hex
	}{
		{proxyproto.Header{Source: netip.MustParseAddrPort("192.0.2.1:4001")}, "11", "000c"},
		{proxyproto.Header{Source: netip.MustParseAddrPort("192.0.2.1:4001"), Datagram: true}, "12", "000c"},
		{proxyproto.Header{Source: netip.MustParseAddrPort("[2001:db8::1]:4001"), Datagram: true}, "22", "0024"},
		{proxyproto.Header{Datagram: true}, "00", "0000"},
		{proxyproto.Header{}, "00", "0000"},
	} {
		got, err := c.h.Append(nil)
		if err != nil {
			t.Fatal(err)
		}
		if fixed := hex.EncodeToString(got[12:16]); fixed != "21"+c.fam+c.n {
			t.Errorf("%+v: command, family and length %s, want %s", c.h, fixed, "21"+c.fam+c.n)
		}
		back, err := proxyproto.Read(bytes.NewReader(got))
		if err != nil {
			t.Fatal(err)
		}
		if back.Datagram != (c.h.Datagram && c.h.Source.IsValid()) || back.Source != c.h.Source {
			t.Errorf("%+v: read back %+v", c.h, back)
		}
	}
}

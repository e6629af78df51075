// Package proxyproto writes and reads the PROXY protocol version 2 header
// (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt), the binary
// preamble that HAProxy, nginx and Envoy use to tell a TCP service who the
// real client is.
//
// The balancer's sidecar (`balancer backend --proxy-protocol`) sends one at
// the start of every TCP connection it opens to a local service for a
// forwarded libp2p stream. Besides the standard address block, which holds
// the remote peer's IP and port when its address has them, the header
// carries two TLVs of the custom range that the PROXY protocol reserves for
// applications (0xE0–0xEF):
//
//	0xE0  TLVPeerID    the remote peer's ID, as text ("12D3KooW..."), UTF-8
//	0xE1  TLVProtocol  the libp2p protocol ID the stream was opened on
//
// A source over UDP (QUIC) is written as STREAM unless Header.Datagram
// asks for DGRAM, since nginx ignores the addresses of a DGRAM header; a
// source with no address of its own (a relayed peer) has none in the
// header (UNSPEC).
//
// A service in any language reads the 16-byte fixed part, then the length
// it announces, and finds the TLVs after the address block; Read does that
// in Go.
package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Signature is the 12 bytes every version 2 header starts with.
var Signature = []byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

// The custom TLV types this package writes.
const (
	// TLVPeerID holds the remote libp2p peer's ID in its text form.
	TLVPeerID byte = 0xE0
	// TLVProtocol holds the libp2p protocol ID of the forwarded stream.
	TLVProtocol byte = 0xE1
)

// Command, family and transport values of the header (section 2.2 of the
// specification).
const (
	cmdLocal = 0x20 // version 2, LOCAL
	cmdProxy = 0x21 // version 2, PROXY

	famUnspec      = 0x00
	famTCP4        = 0x11 // AF_INET, STREAM
	famTCP6        = 0x21 // AF_INET6, STREAM
	transDgram     = 0x02 // the family byte's low nibble: DGRAM (STREAM is 1)
	famUnixAddrLen = 216  // AF_UNIX: two 108-byte paths

	fixedLen = 16
)

// TLV is a type–length–value entry of the header.
type TLV struct {
	Type  byte
	Value []byte
}

// Header is a PROXY protocol v2 header.
type Header struct {
	// Local marks a LOCAL command: the connection was not proxied (a
	// health check, say) and carries no addresses. Write never sets it.
	Local bool
	// Source is the original client's address; the zero value means
	// unknown, and the header then carries no address block (family
	// UNSPEC), as for a peer reached over a relay.
	Source netip.AddrPort
	// Destination is the address the client connected to. When it is not
	// of Source's family, the zero address of that family is written.
	Destination netip.AddrPort
	// Datagram marks a Source that reached the proxy over a datagram
	// transport (QUIC, WebTransport and WebRTC run over UDP): the header
	// then says DGRAM (0x12, 0x22) instead of STREAM (0x11, 0x21), as the
	// specification asks. It is a choice, not a default, because nginx
	// (ngx_proxy_protocol_v2_read) ignores the addresses of any header
	// whose transport is not STREAM, so a service behind nginx would lose
	// the client's address. Without Source the header has no address
	// block and Datagram changes nothing.
	Datagram bool
	// PeerID is the remote peer (TLV 0xE0); empty when absent.
	PeerID peer.ID
	// Protocol is the libp2p protocol (TLV 0xE1); empty when absent.
	Protocol string
	// TLVs are other TLVs, written after the two above and, on Read,
	// every TLV other than those two.
	TLVs []TLV
}

// Append appends the encoded header to b.
func (h *Header) Append(b []byte) ([]byte, error) {
	var body []byte
	fam := byte(famUnspec)
	if src := h.Source; src.IsValid() {
		srcIP := src.Addr().Unmap()
		dst := h.Destination
		dstIP := dst.Addr().Unmap()
		if srcIP.Is4() {
			fam = famTCP4
			if !dstIP.Is4() {
				dstIP, dst = netip.IPv4Unspecified(), netip.AddrPort{}
			}
		} else {
			fam = famTCP6
			if !dstIP.Is6() {
				dstIP, dst = netip.IPv6Unspecified(), netip.AddrPort{}
			}
		}
		if h.Datagram {
			fam = fam&0xF0 | transDgram
		}
		body = append(body, srcIP.AsSlice()...)
		body = append(body, dstIP.AsSlice()...)
		body = binary.BigEndian.AppendUint16(body, src.Port())
		body = binary.BigEndian.AppendUint16(body, dst.Port())
	}
	tlvs := make([]TLV, 0, 2+len(h.TLVs))
	if h.PeerID != "" {
		tlvs = append(tlvs, TLV{TLVPeerID, []byte(h.PeerID.String())})
	}
	if h.Protocol != "" {
		tlvs = append(tlvs, TLV{TLVProtocol, []byte(h.Protocol)})
	}
	tlvs = append(tlvs, h.TLVs...)
	for _, t := range tlvs {
		if len(t.Value) > 0xFFFF {
			return nil, fmt.Errorf("proxyproto: TLV 0x%02X of %d bytes is too long", t.Type, len(t.Value))
		}
		body = append(body, t.Type)
		body = binary.BigEndian.AppendUint16(body, uint16(len(t.Value)))
		body = append(body, t.Value...)
	}
	if len(body) > 0xFFFF {
		return nil, fmt.Errorf("proxyproto: header of %d bytes is too long", len(body))
	}
	cmd := byte(cmdProxy)
	if h.Local {
		cmd = cmdLocal
	}
	b = append(b, Signature...)
	b = append(b, cmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...), nil
}

// WriteTo writes the header to w in a single Write.
func (h *Header) WriteTo(w io.Writer) (int64, error) {
	b, err := h.Append(nil)
	if err != nil {
		return 0, err
	}
	n, err := w.Write(b)
	return int64(n), err
}

// ErrNoHeader is returned by Read when the stream does not start with the
// version 2 signature.
var ErrNoHeader = errors.New("proxyproto: no PROXY protocol v2 header")

// Read reads one header from r, and not a byte more, so that the
// connection's own data follows untouched.
func Read(r io.Reader) (*Header, error) {
	var fixed [fixedLen]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return nil, fmt.Errorf("proxyproto: reading header: %w", err)
	}
	if !bytes.Equal(fixed[:12], Signature) {
		return nil, ErrNoHeader
	}
	if fixed[12]>>4 != 2 {
		return nil, fmt.Errorf("proxyproto: version %d, want 2", fixed[12]>>4)
	}
	body := make([]byte, binary.BigEndian.Uint16(fixed[14:]))
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("proxyproto: reading header: %w", err)
	}
	return parse(fixed[12], fixed[13], body)
}

func parse(cmd, fam byte, body []byte) (*Header, error) {
	h := &Header{}
	switch cmd {
	case cmdLocal:
		h.Local = true
	case cmdProxy:
	default:
		return nil, fmt.Errorf("proxyproto: unknown command 0x%02X", cmd)
	}
	h.Datagram = fam&0x0F == transDgram
	var addrLen int
	switch fam >> 4 {
	case 0:
	case 1:
		addrLen = 12
	case 2:
		addrLen = 36
	case 3:
		addrLen = famUnixAddrLen
	default:
		return nil, fmt.Errorf("proxyproto: unknown address family 0x%02X", fam)
	}
	if len(body) < addrLen {
		return nil, fmt.Errorf("proxyproto: address block of %d bytes, want %d", len(body), addrLen)
	}
	if !h.Local {
		switch addrLen {
		case 12:
			src, _ := netip.AddrFromSlice(body[0:4])
			dst, _ := netip.AddrFromSlice(body[4:8])
			h.Source = netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[8:]))
			h.Destination = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(body[10:]))
		case 36:
			src, _ := netip.AddrFromSlice(body[0:16])
			dst, _ := netip.AddrFromSlice(body[16:32])
			h.Source = netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[32:]))
			h.Destination = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(body[34:]))
		}
	}
	rest := body[addrLen:]
	for len(rest) > 0 {
		if len(rest) < 3 {
			return nil, errors.New("proxyproto: truncated TLV")
		}
		typ, n := rest[0], int(binary.BigEndian.Uint16(rest[1:]))
		if len(rest) < 3+n {
			return nil, fmt.Errorf("proxyproto: TLV 0x%02X overruns the header", typ)
		}
		val := rest[3 : 3+n]
		rest = rest[3+n:]
		switch typ {
		case TLVPeerID:
			id, err := peer.Decode(string(val))
			if err != nil {
				return nil, fmt.Errorf("proxyproto: peer ID TLV: %w", err)
			}
			h.PeerID = id
		case TLVProtocol:
			h.Protocol = string(val)
		default:
			h.TLVs = append(h.TLVs, TLV{typ, bytes.Clone(val)})
		}
	}
	return h, nil
}

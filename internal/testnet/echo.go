package testnet

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/libp2p-balancer/libp2p-balancer/proxyproto"
)

// Echo answers a stream with everything it read, after the writer's
// half-close, then closes. It is a stream handler.
func Echo(s network.Stream) {
	defer s.Close()
	data, err := io.ReadAll(s)
	if err != nil {
		s.Reset()
		return
	}
	if _, err := s.Write(data); err != nil {
		s.Reset()
	}
}

// RoundTrip writes payload on s, half-closes, reads the echo back and
// checks it, and closes s (a Close error is not a failed round trip). It does not need a testing.T, so that many
// goroutines can use it; CheckRoundTrip is the form for a test's own
// goroutine.
func RoundTrip(s network.Stream, payload []byte) error {
	_ = s.SetDeadline(time.Now().Add(60 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := s.Write(payload)
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(s)
	werr := <-errc
	switch {
	case err != nil:
		s.Reset()
		return fmt.Errorf("reading echo: %w", err)
	case werr != nil:
		s.Reset()
		return fmt.Errorf("writing: %w", werr)
	case !bytes.Equal(got, payload):
		s.Reset()
		return fmt.Errorf("echo differs: got %d bytes, want %d: %w", len(got), len(payload), io.ErrUnexpectedEOF)
	}
	// The round trip is complete and checked. Close can still fail, when
	// the connection goes right after the echo (a backend killed under
	// load): that loses no byte, and a test that counts failed streams
	// must not count it.
	s.Close()
	return nil
}

// CheckRoundTrip is RoundTrip that fails the test on error.
func CheckRoundTrip(t testing.TB, s network.Stream, payload []byte) {
	t.Helper()
	if err := RoundTrip(s, payload); err != nil {
		t.Fatal(err)
	}
}

// RandomBytes returns n random bytes.
func RandomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read does not fail (it crashes instead)
	return b
}

// EachTransport runs f as a subtest over each of Transports.
func EachTransport(t *testing.T, f func(t *testing.T, tr Transport)) {
	for _, tr := range Transports {
		t.Run(string(tr), func(t *testing.T) { f(t, tr) })
	}
}

// Digest is a payload's length and SHA-256, to compare large payloads and
// to print them briefly.
type Digest struct {
	N   int64
	Sum string // hex
}

// DigestOf returns b's Digest.
func DigestOf(b []byte) Digest {
	s := sha256.Sum256(b)
	return Digest{int64(len(b)), hex.EncodeToString(s[:])}
}

func (d Digest) String() string { return fmt.Sprintf("%d bytes, sha256 %.16s…", d.N, d.Sum) }

// TCPEcho is a local TCP service, the kind a sidecar forwards to: it echoes
// what it reads as it reads it and half-closes when the caller does. Its
// connections are closed when the test ends.
type TCPEcho struct {
	Addr string
	// Headers receives the PROXY v2 header read at the start of each
	// connection, when the service was started with proxy set. A
	// connection whose header does not parse is answered with the error
	// and closed.
	Headers chan *proxyproto.Header
	// Got receives the Digest of what each connection received, when the
	// caller half-closed it.
	Got chan Digest
}

// StartTCPEcho starts a TCPEcho on 127.0.0.1, port 0.
func StartTCPEcho(t testing.TB, proxy bool) *TCPEcho {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ServeTCPEcho(t, l, proxy)
}

// ServeTCPEcho runs a TCPEcho on l, which it closes when the test ends. At
// most 64 headers and digests wait unread on the channels; later ones are
// dropped.
func ServeTCPEcho(t testing.TB, l net.Listener, proxy bool) *TCPEcho {
	s := &TCPEcho{Addr: l.Addr().String(), Headers: make(chan *proxyproto.Header, 64), Got: make(chan Digest, 64)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				s.serve(c.(*net.TCPConn), proxy)
			}()
		}
	}()
	return s
}

func (s *TCPEcho) serve(c *net.TCPConn, proxy bool) {
	if proxy {
		h, err := proxyproto.Read(c)
		if err != nil {
			fmt.Fprintf(c, "bad PROXY header: %v", err)
			return
		}
		select {
		case s.Headers <- h:
		default:
		}
	}
	h := sha256.New()
	n, err := io.Copy(c, io.TeeReader(c, h))
	if err != nil {
		return
	}
	c.CloseWrite()
	select {
	case s.Got <- Digest{n, hex.EncodeToString(h.Sum(nil))}:
	default:
	}
}

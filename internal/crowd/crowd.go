// Package crowd runs many remote peers in one process, as plain go-libp2p
// clients (go-libp2p's default limits, TCP, no listener), and holds echo
// streams from them through a balancer: the load a balancer meets in
// production is many peers with a few streams each, not a few peers with
// many. test/scale and bench's serve mode use it; neither the race detector
// nor a test's bookkeeping should slow it, so it runs in a binary of its own
// there (test/scale/internal/crowd) or in the bench process.
package crowd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

// Echo answers a stream with what it reads, as it reads it, and closes at
// the writer's half-close: the backend side of every crowd stream.
func Echo(s network.Stream) {
	defer s.Close()
	if _, err := io.Copy(s, s); err != nil {
		s.Reset()
	}
}

// Crowd is a set of client hosts.
type Crowd struct {
	Hosts []host.Host
}

// New starts n client hosts over TCP. Close them with Close, also on error.
func New(n int) (*Crowd, error) { return NewOver(n, "tcp") }

// NewOver starts n client hosts over transport, "tcp" or "quic".
func NewOver(n int, transport string) (*Crowd, error) {
	c := &Crowd{}
	tr := libp2p.Transport(tcp.NewTCPTransport)
	switch transport {
	case "tcp":
	case "quic":
		tr = libp2p.Transport(libp2pquic.NewTransport)
	default:
		return c, fmt.Errorf("crowd: unknown transport %q", transport)
	}
	for range n {
		h, err := libp2p.New(libp2p.NoListenAddrs, tr, libp2p.DisableRelay())
		if err != nil {
			return c, err
		}
		c.Hosts = append(c.Hosts, h)
	}
	return c, nil
}

// Close closes every host.
func (c *Crowd) Close() {
	for _, h := range c.Hosts {
		h.Close()
	}
}

// each runs f for every host, workers at a time, and returns the first
// error.
func (c *Crowd) each(workers int, f func(i int, h host.Host) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := make(chan int)
	for range max(1, workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i, c.Hosts[i]); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range c.Hosts {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// Connect connects every host to target, workers at a time.
func (c *Crowd) Connect(ctx context.Context, target peer.AddrInfo, workers int) error {
	return c.each(workers, func(i int, h host.Host) error {
		if err := h.Connect(ctx, target); err != nil {
			return fmt.Errorf("peer %d: connect: %w", i, err)
		}
		return nil
	})
}

// Reconnect connects again every host that is no longer connected to
// target, workers at a time, for at most rounds rounds, and returns how many
// connections it made again. Over QUIC a burst of new connections can lose
// some right after their handshake: go-libp2p's QUIC listener holds at
// most 16 handshaken connections waiting for its accept loop and closes
// the rest ("queue full", application error 1), after the client's Connect
// has returned. A real client dials again; so does the crowd.
func (c *Crowd) Reconnect(ctx context.Context, target peer.AddrInfo, workers, rounds int) (int, error) {
	again := 0
	for range rounds {
		var lost []int
		for i, h := range c.Hosts {
			if h.Network().Connectedness(target.ID) != network.Connected {
				lost = append(lost, i)
			}
		}
		if len(lost) == 0 {
			return again, nil
		}
		again += len(lost)
		sub := &Crowd{Hosts: make([]host.Host, len(lost))}
		for k, i := range lost {
			sub.Hosts[k] = c.Hosts[i]
		}
		if err := sub.Connect(ctx, target, workers); err != nil {
			return again, err
		}
	}
	if n := c.Connected(target.ID); n < len(c.Hosts) {
		return again, fmt.Errorf("crowd: %d of %d hosts still not connected after %d rounds", len(c.Hosts)-n, len(c.Hosts), rounds)
	}
	return again, nil
}

// Connected counts the hosts connected to p.
func (c *Crowd) Connected(p peer.ID) int {
	n := 0
	for _, h := range c.Hosts {
		if h.Network().Connectedness(p) == network.Connected {
			n++
		}
	}
	return n
}

// Stream is one held echo stream: the first part of its payload has gone
// through and come back.
type Stream struct {
	s       network.Stream
	payload []byte
	sent    int
}

// Payload returns the bytes stream j of peer i carries: size bytes, the
// same on every run, different for every stream.
func Payload(i, j, size int) []byte {
	rng := rand.New(rand.NewPCG(uint64(i), uint64(j)))
	b := make([]byte, size)
	for k := 0; k+8 <= len(b); k += 8 {
		binary.LittleEndian.PutUint64(b[k:], rng.Uint64())
	}
	return b
}

// Hold opens perPeer streams on proto to target from every host, workers
// hosts at a time, and on each sends the first first bytes of its payload
// (Payload(i, j, size)) and reads them back, so that every returned stream
// is known to reach the backend. On error it resets the streams it opened.
func (c *Crowd) Hold(ctx context.Context, target peer.ID, proto protocol.ID, perPeer, size, first, workers int) ([]*Stream, error) {
	first = min(first, size)
	held := make([][]*Stream, len(c.Hosts))
	err := c.each(workers, func(i int, h host.Host) error {
		for j := range perPeer {
			s, err := h.NewStream(ctx, target, proto)
			if err != nil {
				return fmt.Errorf("peer %d stream %d: open: %w", i, j, err)
			}
			st := &Stream{s: s, payload: Payload(i, j, size)}
			held[i] = append(held[i], st)
			if err := st.send(ctx, first); err != nil {
				return fmt.Errorf("peer %d stream %d: %w", i, j, err)
			}
		}
		return nil
	})
	var out []*Stream
	for _, hs := range held {
		out = append(out, hs...)
	}
	if err != nil {
		Reset(out)
		return nil, err
	}
	return out, nil
}

// send writes the payload's next n bytes and reads them back.
func (st *Stream) send(ctx context.Context, n int) error {
	if d, ok := ctx.Deadline(); ok {
		_ = st.s.SetDeadline(d)
		defer st.s.SetDeadline(time.Time{})
	}
	part := st.payload[st.sent : st.sent+n]
	if _, err := st.s.Write(part); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	back := make([]byte, n)
	if _, err := io.ReadFull(st.s, back); err != nil {
		return fmt.Errorf("read the first %d bytes back: %w", n, err)
	}
	if !bytes.Equal(back, part) {
		return errors.New("the first bytes came back changed")
	}
	st.sent += n
	return nil
}

// Finish sends the rest of the stream's payload, half-closes, and checks
// that exactly the whole payload came back (by SHA-256) and then EOF. It
// closes the stream.
func (st *Stream) Finish(ctx context.Context) error {
	defer st.s.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = st.s.SetDeadline(d)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := st.s.Write(st.payload[st.sent:])
		if err == nil {
			err = st.s.CloseWrite()
		}
		errc <- err
	}()
	h := sha256.New()
	h.Write(st.payload[:st.sent])
	n, err := io.Copy(h, st.s)
	if werr := <-errc; werr != nil {
		st.s.Reset()
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		st.s.Reset()
		return fmt.Errorf("read after %d bytes: %w", int64(st.sent)+n, err)
	}
	want := sha256.Sum256(st.payload)
	if int(n)+st.sent != len(st.payload) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("echo of %d bytes came back as %d bytes with another hash", len(st.payload), int(n)+st.sent)
	}
	return nil
}

// FinishAll finishes every stream, workers at a time, and returns how many
// came back whole and the first error.
func FinishAll(ctx context.Context, streams []*Stream, workers int) (int, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		ok    int
		first error
	)
	next := make(chan *Stream)
	for range max(1, workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for st := range next {
				err := st.Finish(ctx)
				mu.Lock()
				if err == nil {
					ok++
				} else if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	for _, st := range streams {
		next <- st
	}
	close(next)
	wg.Wait()
	return ok, first
}

// Reset resets every stream.
func Reset(streams []*Stream) {
	for _, st := range streams {
		st.s.Reset()
	}
}

// Close closes every stream.
func Close(streams []*Stream) {
	for _, st := range streams {
		st.s.Close()
	}
}

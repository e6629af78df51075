package harness

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// quietLogger keeps the libraries' info lines (one per route change) out
// of the benchmark's output.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// bulkChunk is the size of each Write of the bulk workloads: an
// application that streams a file writes large chunks.
const bulkChunk = 1 << 20

var bulkData = make([]byte, bulkChunk)

// run executes one workload half on host name, opening streams to target
// either on the host itself (via "host") or through the backend library
// (via "backend", outbound through the balancer).
func (n *node) run(ctx context.Context, name, via string, target peer.AddrInfo, w *Work) (*Result, error) {
	if w == nil {
		return nil, errors.New("no work")
	}
	h, err := n.host(name)
	if err != nil {
		return nil, err
	}
	if len(target.Addrs) > 0 {
		h.Peerstore().AddAddrs(target.ID, target.Addrs, peerstore.PermanentAddrTTL)
	}
	open := func(ctx context.Context, proto protocol.ID) (network.Stream, error) {
		if via == "backend" {
			n.mu.Lock()
			b := n.backends[name]
			n.mu.Unlock()
			if b == nil {
				return nil, fmt.Errorf("no backend on %q", name)
			}
			return b.NewStream(ctx, target.ID, proto)
		}
		return h.NewStream(network.WithAllowLimitedConn(ctx, "bench"), target.ID, proto)
	}
	switch w.Kind {
	case "bulk":
		start := time.Now()
		if err := bulk(ctx, open, w.Size); err != nil {
			return nil, err
		}
		return &Result{Bytes: w.Size, Seconds: time.Since(start).Seconds(), Count: 1}, nil
	case "parallel":
		start := time.Now()
		errs := make(chan error, w.Streams)
		for range w.Streams {
			go func() { errs <- bulk(ctx, open, w.Size) }()
		}
		var first error
		for range w.Streams {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		if first != nil {
			return nil, first
		}
		return &Result{Bytes: w.Size * int64(w.Streams), Seconds: time.Since(start).Seconds(), Count: w.Streams}, nil
	case "rr":
		return requestResponse(ctx, open, w.Count, int(w.Size), max(1, w.Workers))
	case "idle-open":
		return n.idleOpen(ctx, name, open, w.Streams, w.Workers)
	case "idle-close":
		return n.idleClose(name, w.Workers)
	}
	return nil, fmt.Errorf("unknown work %q", w.Kind)
}

type opener func(context.Context, protocol.ID) (network.Stream, error)

// bulk writes size bytes on one sink stream, half-closes, and waits for the
// responder's byte count, so the time covers delivery, not just buffering.
func bulk(ctx context.Context, open opener, size int64) error {
	s, err := open(ctx, ProtoSink)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	for left := size; left > 0; {
		chunk := bulkData[:min(left, bulkChunk)]
		if _, err := s.Write(chunk); err != nil {
			s.Reset()
			return fmt.Errorf("write: %w", err)
		}
		left -= int64(len(chunk))
	}
	if err := s.CloseWrite(); err != nil {
		s.Reset()
		return fmt.Errorf("close write: %w", err)
	}
	var got [8]byte
	if _, err := io.ReadFull(s, got[:]); err != nil {
		s.Reset()
		return fmt.Errorf("reading the count: %w", err)
	}
	if c := int64(binary.BigEndian.Uint64(got[:])); c != size {
		s.Reset()
		return fmt.Errorf("responder got %d bytes of %d", c, size)
	}
	s.Close()
	return nil
}

// requestResponse opens count echo streams, workers at a time (each worker
// one stream after another), each carrying size bytes there and back, and
// times each from open to EOF.
func requestResponse(ctx context.Context, open opener, count, size, workers int) (*Result, error) {
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte(i)
	}
	var (
		mu    sync.Mutex
		lat   = make([]time.Duration, 0, count)
		first error
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			back := make([]byte, size+1)
			for {
				i := int(next.Add(1)) - 1
				if i >= count {
					return
				}
				d, err := oneRequest(ctx, open, i, msg, back)
				mu.Lock()
				if err != nil && first == nil {
					first = err
					next.Store(int64(count)) // the other workers stop
				}
				lat = append(lat, d)
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return nil, first
	}
	total := time.Since(start)
	slices.Sort(lat)
	return &Result{
		Count:   count,
		Seconds: total.Seconds(),
		P50ms:   ms(quantile(lat, 0.50)),
		P99ms:   ms(quantile(lat, 0.99)),
	}, nil
}

// oneRequest is stream i of requestResponse: open, write msg, half-close,
// read the echo to EOF into back (one byte longer than msg).
func oneRequest(ctx context.Context, open opener, i int, msg, back []byte) (time.Duration, error) {
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	t0 := time.Now()
	s, err := open(ctx, ProtoEcho)
	if err != nil {
		return 0, fmt.Errorf("stream %d: open: %w", i, err)
	}
	if _, err := s.Write(msg); err != nil {
		s.Reset()
		return 0, fmt.Errorf("stream %d: write: %w", i, err)
	}
	if err := s.CloseWrite(); err != nil {
		s.Reset()
		return 0, fmt.Errorf("stream %d: close write: %w", i, err)
	}
	_ = s.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadFull(s, back)
	if err != io.ErrUnexpectedEOF || got != len(msg) {
		s.Reset()
		return 0, fmt.Errorf("stream %d: read %d of %d bytes: %v", i, got, len(msg), err)
	}
	s.Close()
	return time.Since(t0), nil
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted)) + 0.5)
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// idleOpen opens count hold streams with workers at a time, each confirmed
// end to end by the responder's one-byte answer, and keeps them open.
func (n *node) idleOpen(ctx context.Context, name string, open opener, count, workers int) (*Result, error) {
	if workers <= 0 {
		workers = 16
	}
	start := time.Now()
	var (
		mu    sync.Mutex
		held  = make([]network.Stream, 0, count)
		first error
		wg    sync.WaitGroup
		next  = make(chan struct{}, count)
	)
	for range count {
		next <- struct{}{}
	}
	close(next)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				mu.Lock()
				failed := first != nil
				mu.Unlock()
				if failed {
					return
				}
				s, err := openHeld(ctx, open)
				mu.Lock()
				if err != nil {
					if first == nil {
						first = fmt.Errorf("idle stream %d: %w", len(held), err)
					}
				} else {
					held = append(held, s)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	n.mu.Lock()
	n.held[name] = append(n.held[name], held...)
	n.mu.Unlock()
	if first != nil {
		return nil, first
	}
	return &Result{Count: len(held), Seconds: time.Since(start).Seconds()}, nil
}

func openHeld(ctx context.Context, open opener) (network.Stream, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := open(ctx, ProtoHold)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	one := []byte{'h'}
	if _, err := s.Write(one); err != nil {
		s.Reset()
		return nil, err
	}
	if _, err := io.ReadFull(s, one); err != nil {
		s.Reset()
		return nil, err
	}
	return s, nil
}

// idleClose closes every stream idleOpen holds on host name.
func (n *node) idleClose(name string, workers int) (*Result, error) {
	n.mu.Lock()
	held := n.held[name]
	delete(n.held, name)
	n.mu.Unlock()
	if workers <= 0 {
		workers = 16
	}
	start := time.Now()
	ch := make(chan network.Stream, len(held))
	for _, s := range held {
		ch <- s
	}
	close(ch)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range ch {
				_ = s.SetDeadline(time.Now().Add(10 * time.Second))
				s.CloseWrite()
				var one [1]byte
				if _, err := s.Read(one[:]); err != io.EOF {
					s.Reset()
					continue
				}
				s.Close()
			}
		}()
	}
	wg.Wait()
	return &Result{Count: len(held), Seconds: time.Since(start).Seconds()}, nil
}

package pipe_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/libp2p-balancer/libp2p-balancer/pipe"
)

func randomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	p := make([]byte, n)
	if _, err := rand.Read(p); err != nil {
		tb.Fatal(err)
	}
	return p
}

// sendAndReceive writes out to s and closes s for writing, while reading s
// to EOF. It returns the sha256 of what it read.
func sendAndReceive(s network.Stream, out []byte) (sum [32]byte, n int64, err error) {
	werr := make(chan error, 1)
	go func() {
		if _, err := s.Write(out); err != nil {
			werr <- err
			return
		}
		werr <- s.CloseWrite()
	}()
	h := sha256.New()
	n, rerr := io.Copy(h, s)
	if err := <-werr; err != nil {
		return sum, n, err
	}
	if rerr != nil {
		return sum, n, rerr
	}
	copy(sum[:], h.Sum(nil))
	return sum, n, s.Close()
}

func TestRoundTrip(t *testing.T) {
	sizes := []int{0, 1, 1 << 10, 1 << 20, 16 << 20}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			c := newChain(t, tr, joinWith(nil))
			for _, size := range sizes {
				t.Run(byteSize(size), func(t *testing.T) {
					toB, toA := randomBytes(t, size), randomBytes(t, size)
					a := c.open(t)

					type got struct {
						sum [32]byte
						n   int64
						err error
					}
					atA := make(chan got, 1)
					go func() {
						sum, n, err := sendAndReceive(a, toB)
						atA <- got{sum, n, err}
					}()
					b := c.back(t)
					sumB, nB, err := sendAndReceive(b, toA)
					if err != nil {
						t.Fatalf("at B: %v", err)
					}
					ga := <-atA
					if ga.err != nil {
						t.Fatalf("at A: %v", ga.err)
					}
					if nB != int64(size) || sumB != sha256.Sum256(toB) {
						t.Errorf("B got %d bytes, want %d, checksum match %v", nB, size, sumB == sha256.Sum256(toB))
					}
					if ga.n != int64(size) || ga.sum != sha256.Sum256(toA) {
						t.Errorf("A got %d bytes, want %d, checksum match %v", ga.n, size, ga.sum == sha256.Sum256(toA))
					}

					r := c.result(t)
					if r.Err != nil {
						t.Errorf("Join: %v", r.Err)
					}
					if r.AToB != int64(size) || r.BToA != int64(size) {
						t.Errorf("Join carried %d/%d bytes, want %d each way", r.AToB, r.BToA, size)
					}
				})
			}
		})
	}
}

func byteSize(n int) string {
	switch {
	case n >= 1<<20:
		return itoa(n>>20) + "MiB"
	case n >= 1<<10:
		return itoa(n>>10) + "KiB"
	}
	return itoa(n) + "B"
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// TestHalfClose checks that A's CloseWrite reaches B as EOF while the way
// back stays open for B's reply.
func TestHalfClose(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			c := newChain(t, tr, joinWith(nil))
			request, reply := randomBytes(t, 100_000), randomBytes(t, 300_000)

			a := c.open(t)
			mustWrite(t, a, request)
			if err := a.CloseWrite(); err != nil {
				t.Fatal(err)
			}

			b := c.back(t)
			got, err := io.ReadAll(b)
			if err != nil {
				t.Fatalf("B reading the request: %v", err)
			}
			if !bytes.Equal(got, request) {
				t.Fatalf("B got %d bytes, want the %d-byte request", len(got), len(request))
			}
			mustWrite(t, b, reply)
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}

			got, err = io.ReadAll(a)
			if err != nil {
				t.Fatalf("A reading the reply: %v", err)
			}
			if !bytes.Equal(got, reply) {
				t.Fatalf("A got %d bytes, want the %d-byte reply", len(got), len(reply))
			}
			_ = a.Close()

			r := c.result(t)
			if r.Err != nil {
				t.Errorf("Join: %v", r.Err)
			}
			if r.AToB != int64(len(request)) || r.BToA != int64(len(reply)) {
				t.Errorf("Join carried %d/%d bytes, want %d/%d", r.AToB, r.BToA, len(request), len(reply))
			}
		})
	}
}

// TestEarlyClose checks that a client that closes its stream without
// reading to EOF, as many request/response clients do, still ends the
// Join cleanly. Over QUIC the client's Close stops M's sending side, so
// M's CloseWrite and Close towards A fail; that is no failure of the
// exchange.
func TestEarlyClose(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			c := newChain(t, tr, joinWith(nil))
			a := c.open(t)
			mustWrite(t, a, []byte("request"))
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			b := c.back(t)
			got, err := io.ReadAll(b)
			if err != nil || string(got) != "request" {
				t.Fatalf("B read %q, %v", got, err)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			r := c.result(t)
			if r.Err != nil || r.AToB != int64(len("request")) || r.BToA != 0 {
				t.Errorf("Join: %d/%d bytes, error %v; want 7/0, nil", r.AToB, r.BToA, r.Err)
			}
		})
	}
}

// TestResetCarried checks that a reset by either peer reaches the other.
func TestResetCarried(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			c := newChain(t, tr, joinWith(nil))
			for _, tc := range []struct {
				name    string
				resetB  bool
				wantDir pipe.Direction
			}{
				{"B resets", true, pipe.BToA},
				{"A resets", false, pipe.AToB},
			} {
				t.Run(tc.name, func(t *testing.T) {
					a, b := c.openEstablished(t)
					resetter, other := a, b
					if tc.resetB {
						resetter, other = b, a
					}
					if err := resetter.Reset(); err != nil {
						t.Fatal(err)
					}
					err := readErr(t, other)
					if err == io.EOF {
						t.Fatal("the reset arrived as a clean EOF")
					}
					if !errors.Is(err, network.ErrReset) {
						t.Errorf("read error %v, want network.ErrReset", err)
					}

					r := c.result(t)
					var pe *pipe.Error
					if !errors.As(r.Err, &pe) || pe.Op != "read" || pe.Dir != tc.wantDir {
						t.Fatalf("Join error %v, want a %v read error", r.Err, tc.wantDir)
					}
					if !errors.Is(r.Err, network.ErrReset) {
						t.Errorf("Join error %v does not wrap network.ErrReset", r.Err)
					}
					if r.AToB != 1 || r.BToA != 1 {
						t.Errorf("Join carried %d/%d bytes, want 1/1", r.AToB, r.BToA)
					}
				})
			}
		})
	}
}

// TestBackPressure checks that a peer that does not read stops the writer
// on the far side instead of making M buffer.
func TestBackPressure(t *testing.T) {
	// With default windows the whole chain (two yamux or QUIC stream
	// windows, socket buffers and M's one buffer) holds a few MiB; 64 MiB
	// means something is buffering without bound.
	const limit = 64 << 20
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			c := newChain(t, tr, joinWith(nil))
			a, b := c.openEstablished(t)

			// A writes until a write makes no progress for a while. The
			// deadline detects the stall; it synchronises nothing, and a
			// spurious early timeout would only make the test weaker.
			chunk := randomBytes(t, 64<<10)
			sent := sha256.New()
			var written int
			for written < limit {
				_ = a.SetWriteDeadline(time.Now().Add(time.Second))
				n, err := a.Write(chunk)
				sent.Write(chunk[:n])
				written += n
				if err != nil {
					var ne net.Error
					if !errors.As(err, &ne) || !ne.Timeout() {
						t.Fatalf("write: %v", err)
					}
					break
				}
			}
			if written >= limit {
				t.Fatalf("A wrote %d MiB while B read nothing", written>>20)
			}
			t.Logf("A wrote %d KiB before it was blocked", written>>10)
			_ = a.SetWriteDeadline(time.Now().Add(waitFor))

			// Nothing was lost or duplicated while the chain was full.
			if err := a.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			received := sha256.New()
			n, err := io.Copy(received, b)
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(written) || !bytes.Equal(received.Sum(nil), sent.Sum(nil)) {
				t.Fatalf("B read %d bytes, want the %d that A wrote (checksum match %v)",
					n, written, bytes.Equal(received.Sum(nil), sent.Sum(nil)))
			}
			_ = b.Close()
			_ = a.Close()
			if r := c.result(t); r.Err != nil || r.AToB != int64(written)+1 {
				t.Errorf("Join: %d bytes a->b, error %v; want %d, nil", r.AToB, r.Err, written+1)
			}
		})
	}
}

func TestIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			c := newChain(t, tr, joinWith(&pipe.Config{IdleTimeout: idle}))

			t.Run("idle", func(t *testing.T) {
				a, b := c.openEstablished(t)
				quietSince := time.Now()
				if err := readErr(t, a); !errors.Is(err, network.ErrReset) {
					t.Errorf("A: read error %v, want network.ErrReset", err)
				}
				// The bound is loose because M saw the last byte a little
				// before A did.
				if d := time.Since(quietSince); d < idle/2 {
					t.Errorf("reset after %v, before the %v idle timeout", d, idle)
				}
				if err := readErr(t, b); !errors.Is(err, network.ErrReset) {
					t.Errorf("B: read error %v, want network.ErrReset", err)
				}
				if r := c.result(t); !errors.Is(r.Err, pipe.ErrIdleTimeout) {
					t.Errorf("Join error %v, want ErrIdleTimeout", r.Err)
				}
				waitNoPipeGoroutines(t)
			})

			// Traffic in one direction only keeps the whole pair alive.
			t.Run("one-way traffic", func(t *testing.T) {
				a, b := c.openEstablished(t)
				tick := time.NewTicker(idle / 10)
				defer tick.Stop()
				for start := time.Now(); time.Since(start) < 3*idle; {
					<-tick.C
					mustWrite(t, a, []byte{'.'})
					mustReadByte(t, b, '.')
				}
				select {
				case r := <-c.results:
					t.Fatalf("Join ended while traffic flowed: %v", r.Err)
				default:
				}
				if err := readErr(t, b); !errors.Is(err, network.ErrReset) {
					t.Errorf("B: read error %v, want network.ErrReset", err)
				}
				if r := c.result(t); !errors.Is(r.Err, pipe.ErrIdleTimeout) {
					t.Errorf("Join error %v, want ErrIdleTimeout", r.Err)
				}
			})
		})
	}
}

// TestOneGoroutine checks that each Join starts exactly one goroutine and
// leaves none behind, idle timer included.
func TestOneGoroutine(t *testing.T) {
	const streams = 5
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			c := newChain(t, tr, joinWith(&pipe.Config{IdleTimeout: time.Hour}))
			waitNoPipeGoroutines(t) // earlier tests' Joins may still be ending

			var as []network.Stream
			for range streams {
				a, _ := c.openEstablished(t)
				as = append(as, a)
			}
			inPipe, started := pipeGoroutines()
			if started != streams || inPipe != 2*streams {
				t.Errorf("%d Joins: %d goroutines started by Join, %d in package pipe; want %d and %d",
					streams, started, inPipe, streams, 2*streams)
			}

			for _, a := range as {
				_ = a.Reset()
			}
			for range streams {
				c.result(t)
			}
			waitNoPipeGoroutines(t)
		})
	}
}

func TestProgress(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			var counted [2]atomic.Int64
			var calls atomic.Int64
			c := newChain(t, tr, joinWith(&pipe.Config{Progress: func(dir pipe.Direction, n int) {
				counted[dir].Add(int64(n))
				calls.Add(1)
			}}))
			const toB, toA = 1 << 20, 300_000

			a := c.open(t)
			var wg sync.WaitGroup
			wg.Go(func() {
				if _, _, err := sendAndReceive(a, make([]byte, toB)); err != nil {
					t.Errorf("at A: %v", err)
				}
			})
			if _, _, err := sendAndReceive(c.back(t), make([]byte, toA)); err != nil {
				t.Errorf("at B: %v", err)
			}
			wg.Wait()

			r := c.result(t)
			if r.Err != nil {
				t.Fatal(r.Err)
			}
			if r.AToB != toB || r.BToA != toA {
				t.Errorf("Join carried %d/%d bytes, want %d/%d", r.AToB, r.BToA, toB, toA)
			}
			if got := counted[pipe.AToB].Load(); got != r.AToB {
				t.Errorf("Progress a->b summed to %d, Result says %d", got, r.AToB)
			}
			if got := counted[pipe.BToA].Load(); got != r.BToA {
				t.Errorf("Progress b->a summed to %d, Result says %d", got, r.BToA)
			}
			t.Logf("%d Progress calls", calls.Load())
		})
	}
}

// TestIdleReleasesLargeBuffer checks the buffer heuristic: once a burst is
// over, an idle Join waits on its small buffers only.
func TestIdleReleasesLargeBuffer(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			c := newChain(t, tr, joinWith(nil))
			a, b := c.openEstablished(t)
			burst := randomBytes(t, 1<<20)
			for _, p := range []struct{ from, to network.Stream }{{a, b}, {b, a}} {
				go func() { _, _ = p.from.Write(burst) }()
				if _, err := io.ReadFull(p.to, make([]byte, len(burst))); err != nil {
					t.Fatal(err)
				}
				// A burst may end on a read that fills the large buffer,
				// which keeps it until the next read; a short message
				// after the burst makes the end deterministic.
				mustWrite(t, p.from, []byte{'.'})
				mustReadByte(t, p.to, '.')
			}
			deadline := time.Now().Add(waitFor)
			for pipe.LargeBuffersInUse() != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%d large buffers still held by an idle Join", pipe.LargeBuffersInUse())
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

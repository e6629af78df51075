package pipe_test

import (
	"context"
	"io"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/libp2p-balancer/libp2p-balancer/pipe"
)

// ioCopyForward is the naive forwarder pipe replaces: io.Copy both ways,
// with its 32 KiB buffer per direction held for the life of the stream.
func ioCopyForward(a, b network.Stream) pipe.Result {
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(a, b)
		_ = a.CloseWrite()
		done <- n
	}()
	n, _ := io.Copy(b, a)
	_ = b.CloseWrite()
	r := pipe.Result{AToB: n, BToA: <-done}
	_, _ = a.Close(), b.Close()
	return r
}

// BenchmarkJoinBulk measures one-way bulk throughput A → B: through M with
// pipe.Join ("join"), through M with io.Copy both ways ("iocopy"), and on a
// direct stream M → B ("direct") as the ceiling. All three hosts share the
// process, so M competes with A and B for the CPU.
//
//	go test -run '^$' -bench JoinBulk -benchmem ./pipe/
func BenchmarkJoinBulk(b *testing.B) {
	for _, tr := range transports {
		for _, mode := range []string{"direct", "join", "iocopy"} {
			for _, wsize := range []int{1 << 20, 4 << 10} {
				b.Run(tr.name+"/"+mode+"/"+byteSize(wsize), func(b *testing.B) {
					fwd := joinWith(nil)
					if mode == "iocopy" {
						fwd = ioCopyForward
					}
					c := newChain(b, tr, fwd)
					var src, dst network.Stream
					if mode == "direct" {
						ctx, cancel := context.WithTimeout(context.Background(), waitFor)
						defer cancel()
						s, err := c.M.NewStream(ctx, c.B.ID(), backProto)
						if err != nil {
							b.Fatal(err)
						}
						b.Cleanup(func() { _ = s.Reset() })
						mustWrite(b, s, []byte{'>'})
						src, dst = s, c.back(b)
						mustReadByte(b, dst, '>')
					} else {
						src, dst = c.openEstablished(b)
					}
					bulk(b, src, dst, wsize)
				})
			}
		}
	}
}

// bulk writes 1 MiB per iteration to src and reads it at dst.
func bulk(b *testing.B, src, dst network.Stream, wsize int) {
	chunk := randomBytes(b, wsize)
	done := make(chan int64, 1)
	go func() {
		buf := make([]byte, 32<<10)
		var n int64
		for {
			m, err := dst.Read(buf)
			n += int64(m)
			if err != nil {
				done <- n
				return
			}
		}
	}()
	b.SetBytes(int64(len(chunk)))
	cpu0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		if _, err := src.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	if err := src.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	if n := <-done; n != int64(b.N*len(chunk)) {
		b.Fatalf("received %d bytes, want %d", n, b.N*len(chunk))
	}
	b.StopTimer()
	// CPU per byte is steadier than MB/s on a shared machine, and it is
	// what a balancer pays for.
	gb := float64(b.N) * float64(len(chunk)) / 1e9
	b.ReportMetric((cpuTime()-cpu0).Seconds()/gb, "cpu-s/GB")
}

// cpuTime returns the user and system CPU time of the whole process: A, M
// and B together.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIdleMemory opens 1,000 forwarded streams A → M → B over TCP,
// moves one byte each way (or a burst, then goes quiet) and reports the heap
// and goroutine stack they hold, per stream, for the whole process: A's, M's
// two and B's stream ends together. "hold" keeps the two streams at M
// without copying; the difference from "join" is what pipe costs.
//
//	go test -run '^$' -bench IdleMemory -benchtime 1x ./pipe/
func BenchmarkIdleMemory(b *testing.B) {
	const streams = 1000
	for _, mode := range []struct {
		name  string
		burst int // bytes each way before going idle
	}{
		{"hold", 0},
		{"join", 0},
		{"join-after-burst", 100_000},
		{"iocopy", 0},
	} {
		b.Run(mode.name, func(b *testing.B) {
			release := make(chan struct{})
			var fwd forwarder
			switch mode.name {
			case "hold":
				fwd = func(a, b network.Stream) pipe.Result {
					var one [1]byte
					_, _ = io.ReadFull(a, one[:])
					_, _ = b.Write(one[:])
					_, _ = io.ReadFull(b, one[:])
					_, _ = a.Write(one[:])
					<-release
					_, _ = a.Reset(), b.Reset()
					return pipe.Result{}
				}
			case "iocopy":
				fwd = ioCopyForward
			default:
				fwd = joinWith(nil)
			}
			c := newChain(b, transports[0], fwd)
			burst := make([]byte, max(mode.burst, 1))
			as := make([]network.Stream, 0, streams)
			bs := make([]network.Stream, 0, streams)
			defer func() {
				close(release)
				for i := range as {
					_, _ = as[i].Reset(), bs[i].Reset()
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()

			var m0, m1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m0)
			g0 := runtime.NumGoroutine()
			b.ResetTimer()
			for range streams {
				a, err := c.A.NewStream(ctx, c.M.ID(), frontProto)
				if err != nil {
					b.Fatal(err)
				}
				as = append(as, a)
				if _, err := a.Write([]byte{'>'}); err != nil {
					b.Fatal(err)
				}
				s := <-c.backs
				bs = append(bs, s)
				if _, err := io.ReadFull(s, burst[:1]); err != nil {
					b.Fatal(err)
				}
				if _, err := s.Write(burst[:1]); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(a, burst[:1]); err != nil {
					b.Fatal(err)
				}
				if mode.burst > 0 {
					for _, p := range [][2]network.Stream{{a, s}, {s, a}} {
						go func() { _, _ = p[0].Write(burst) }()
						if _, err := io.ReadFull(p[1], burst); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
			b.StopTimer()
			runtime.GC()
			runtime.ReadMemStats(&m1)
			g1 := runtime.NumGoroutine()
			b.ReportMetric(float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc))/streams, "heap-B/stream")
			b.ReportMetric(float64(int64(m1.StackInuse)-int64(m0.StackInuse))/streams, "stack-B/stream")
			b.ReportMetric(float64(g1-g0)/streams, "goroutines/stream")
			b.ReportMetric(float64(pipe.LargeBuffersInUse()), "large-buffers-held")
		})
	}
}

// memStream is one end of a stream with no transport behind it, so that
// BenchmarkJoinOverhead sees only what pipe itself costs. Read hands out
// chunks in the sizes of pattern (full and short reads, so the copy keeps
// switching between its small and large buffers) until left runs out;
// Write discards.
type memStream struct {
	left    int
	pattern []int
	i       int
}

func (m *memStream) Read(p []byte) (int, error) {
	if m.left == 0 {
		return 0, io.EOF
	}
	n := min(len(p), m.pattern[m.i%len(m.pattern)], m.left)
	m.i++
	m.left -= n
	return n, nil
}

func (m *memStream) Write(p []byte) (int, error) { return len(p), nil }
func (m *memStream) CloseWrite() error           { return nil }
func (m *memStream) Reset() error                { return nil }
func (m *memStream) Close() error                { return nil }

// BenchmarkJoinOverhead runs Join over in-memory ends carrying the given
// bytes each way. allocs/op is per Join and must not grow with the size:
// the copy loop allocates nothing per read.
//
//	go test -run '^$' -bench JoinOverhead -benchmem ./pipe/
func BenchmarkJoinOverhead(b *testing.B) {
	pattern := []int{64 << 10, 64 << 10, 5000, 300, 1024, 40 << 10, 100}
	for _, size := range []int{1 << 10, 1 << 20, 16 << 20} {
		b.Run(byteSize(size), func(b *testing.B) {
			cfg := &pipe.Config{Progress: func(pipe.Direction, int) {}, IdleTimeout: time.Hour}
			b.SetBytes(2 * int64(size))
			b.ReportAllocs()
			for range b.N {
				x := &memStream{left: size, pattern: pattern}
				y := &memStream{left: size, pattern: pattern}
				if r := pipe.Join(x, y, cfg); r.Err != nil || r.AToB != int64(size) {
					b.Fatal(r)
				}
			}
		})
	}
}

// Package naive is the benchmark's "naive forwarder": the copy a forwarder
// written without thought for memory or system calls would run, io.Copy
// both ways with a 32 KiB buffer each. The bench harness runs a balancer
// with this copy instead of package pipe's (setups naive-in and naive-out),
// so that the two differ in nothing but the copy loop (issue 13: "beat a
// naive forwarder per byte").
//
// It is internal on purpose: it is a benchmarking switch, not a feature, and
// it stays out of the balancer's documented options and of balancer serve.
package naive

import (
	"io"
	"sync"

	"github.com/libp2p-balancer/libp2p-balancer/pipe"
)

// BalancerOption is a balancer.Option (type any here, because package
// balancer imports this one) that makes the balancer carry every stream
// with Join. Package balancer sets it in its init, so that the option
// exists without being part of the balancer's public API.
var BalancerOption any

// bufSize is io.Copy's own buffer size.
const bufSize = 32 * 1024

// Join copies a→b and b→a with io.CopyBuffer and a fresh 32 KiB buffer per
// direction, held for the stream's whole life. Otherwise it behaves as
// pipe.Join: EOF is passed on with CloseWrite, any other error resets both
// streams, both are closed at the end, and progress (if not nil) sees every
// write, so that the balancer's byte counters are the same in both modes.
func Join(a, b pipe.Stream, progress func(pipe.Direction, int)) pipe.Result {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		first    error
		nAB, nBA int64
	)
	fail := func(err error) {
		mu.Lock()
		isFirst := first == nil
		if isFirst {
			first = err
		}
		mu.Unlock()
		if isFirst {
			_ = a.Reset()
			_ = b.Reset()
		}
	}
	one := func(dst, src pipe.Stream, dir pipe.Direction, n *int64) {
		// The wrappers hide WriterTo and ReaderFrom, so that the copy
		// goes through the buffer as io.Copy does for libp2p streams.
		w := &countingWriter{w: dst, dir: dir, progress: progress}
		_, err := io.CopyBuffer(w, struct{ io.Reader }{src}, make([]byte, bufSize))
		*n = w.n
		if err != nil {
			op := "read"
			if w.err != nil {
				op = "write"
			}
			fail(&pipe.Error{Dir: dir, Op: op, Err: err})
			return
		}
		_ = dst.CloseWrite()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		one(a, b, pipe.BToA, &nBA)
	}()
	one(b, a, pipe.AToB, &nAB)
	wg.Wait()
	if first == nil {
		_ = a.Close()
		_ = b.Close()
	}
	return pipe.Result{AToB: nAB, BToA: nBA, Err: first}
}

type countingWriter struct {
	w        io.Writer
	dir      pipe.Direction
	progress func(pipe.Direction, int)
	n        int64
	err      error // the last Write's error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	if n > 0 && c.progress != nil {
		c.progress(c.dir, n)
	}
	return n, err
}

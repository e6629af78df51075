// Package pipe joins two byte streams so that what one end reads the other
// end writes, in both directions at once.
//
// It is the single copy routine behind every stream the balancer forwards,
// so that half-close, reset propagation, idle timeouts and byte counting
// behave the same everywhere and are fixed in one place.
//
// A joined pair that carries no traffic costs one new goroutine (the
// caller's runs the other direction) and one 2,304-byte allocation that
// holds both small read buffers; 32 KiB buffers are borrowed from a
// shared pool only while data is flowing. Measured over yamux with
// BenchmarkIdleMemory: about 2.6 KB of heap and a 4 KiB goroutine stack
// per idle pair, against about 65 KB of heap for io.Copy both ways. See
// [Join] for the exact rules.
//
// A [Group] tracks the pairs (or single streams) of one owner in flight, so
// that its shutdown can wait for them, refuse new ones and reset the rest.
package pipe

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	pool "github.com/libp2p/go-buffer-pool"
)

// Buffer sizes, chosen with BenchmarkJoinBulk and BenchmarkIdleMemory
// (go-libp2p v0.51.0, loopback, 2 cores).
const (
	// smallBufSize is what each direction reads into while it waits for
	// data. It lives as long as the Join, so two of them are most of what
	// an idle joined pair costs on the heap. 512 B and 2 KiB made no
	// difference to bulk or 4 KiB-message throughput that the noise on a
	// 2-core machine let us see; 512 B took the balancer's idle cost per
	// forwarded stream under the 16 KiB target (16.8 KiB with 1 KiB, bench
	// harness, -separate). Small request and response messages still fit
	// in one read.
	smallBufSize = 512

	// largeBufSize is borrowed from the pool while data is flowing.
	// Buffers under 32 KiB cost about 30% of bulk throughput
	// (BenchmarkJoinBulk; shared/NOTES.md, "Where the time goes"), because
	// every yamux Write is one frame, one encryption record and one
	// syscall (yamux does not coalesce writes); larger ones only add
	// allocation.
	//
	// 12 bytes short of 32 KiB: yamux puts a 12-byte header on each Write,
	// and TLS cuts records at 16 KiB, so a 32 KiB read became two full
	// records and a third of 12 bytes, one more syscall and seal per 32 KiB
	// (seen with strace in the bench harness). 32 KiB minus the header is
	// exactly two records.
	largeBufSize = 32*1024 - 12
)

// ErrIdleTimeout is the Result error when no byte moved in either
// direction for Config.IdleTimeout.
var ErrIdleTimeout = errors.New("pipe: idle timeout")

// Stream is what Join needs of each end; a go-libp2p network.Stream
// satisfies it.
type Stream interface {
	io.Reader
	io.Writer
	// CloseWrite carries an EOF read on the other end across to this one.
	CloseWrite() error
	// Reset carries a failure on either end to both peers.
	Reset() error
	// Close frees the stream once both directions ended cleanly.
	Close() error
}

// Config tunes Join; the zero value (or nil) is ready to use.
//
// Join copies the fields it needs when it starts, so changing a Config
// affects only later Joins.
type Config struct {
	// Progress, when set, is called each time bytes were written to one of
	// the ends, with the direction and the count, so that callers can keep
	// live byte counters. It is called from two goroutines at once (one per
	// direction) and must not block: a slow Progress stalls the copy. The
	// counts it is given add up exactly to the Result totals.
	Progress func(dir Direction, n int)

	// IdleTimeout, when > 0, resets both streams and makes Join return
	// ErrIdleTimeout once no byte has been read or written, in either
	// direction, for this long. Zero (the default) means no timeout.
	//
	// It costs one time.Timer per Join, not one per read: every read and
	// write stores a timestamp in an atomic, and the timer, when it fires,
	// re-arms itself for the remaining time if there was activity since.
	// A direction blocked in Write because the far reader does not read
	// moves no bytes, so a stalled peer also counts as idle. The stream
	// deadlines are left alone, so deadlines the caller set still apply.
	IdleTimeout time.Duration
}

// Direction names one of the two copies Join runs.
type Direction int

const (
	// AToB reads from a and writes to b.
	AToB Direction = iota
	// BToA reads from b and writes to a.
	BToA
)

// String returns "a->b" or "b->a", for logs and errors.
func (d Direction) String() string {
	switch d {
	case AToB:
		return "a->b"
	case BToA:
		return "b->a"
	}
	return "invalid direction"
}

// Result reports what one Join carried.
type Result struct {
	// AToB and BToA are the bytes written to b and to a.
	AToB, BToA int64
	// Err is nil when both directions ended with EOF. Otherwise it is the
	// first failure: an *Error for a read or write that failed (wrapping
	// the stream's own error, so errors.Is(err, network.ErrReset) works),
	// or ErrIdleTimeout.
	Err error
}

// Error says where a joined stream failed: which direction and which
// operation. A read failure in direction AToB means that a failed (its
// peer usually reset it); a write failure there means that b did (reset,
// or its peer stopped reading).
type Error struct {
	// Dir is the direction whose copy failed.
	Dir Direction
	// Op is "read" or "write".
	Op string
	// Err is the stream's error.
	Err error
}

func (e *Error) Error() string {
	return "pipe: " + e.Dir.String() + " " + e.Op + ": " + e.Err.Error()
}

// Unwrap returns the stream's error, so that callers can test it with
// errors.Is.
func (e *Error) Unwrap() error { return e.Err }

// Join copies a→b and b→a until both directions end, then closes both
// streams (or resets both on error), and returns what it carried.
//
// An EOF read from one end is passed on as CloseWrite on the other, and
// the opposite direction keeps running until it ends too. Any other read
// error, any write error or the idle timeout resets both streams at once,
// so the failure reaches both peers and unblocks the other direction;
// Result.Err is the first of these errors.
//
// Errors from CloseWrite and from the final Close are not failures: by
// then every byte has been written, and they happen in normal exchanges.
// Over QUIC, a peer that calls Close without reading to EOF (common after
// reading a length-prefixed reply) stops our sending side, and CloseWrite
// and Close then fail with "close called for canceled stream".
//
// Data read is always written before the next Read: a Read may block
// forever, and holding bytes back across it would deadlock request and
// response protocols. Each direction holds at most one buffer of data, so
// a slow reader on one side slows the writer on the other side through
// the streams' own flow control.
//
// Join runs a→b on the calling goroutine and b→a on exactly one new
// goroutine, which has finished its work when Join returns. (With an
// IdleTimeout, the timer's callback also runs briefly on a goroutine of
// the runtime's each time it fires; Join waits for that too.) a and b must
// not be nil, and nobody else may read from, write to or close them while
// Join runs (Reset from outside is fine and ends the Join).
func Join(a, b Stream, cfg *Config) Result {
	j := &joiner{}
	// Field by field: a copier literal would be built on the caller's
	// stack first, small buffer and all.
	j.ab.j, j.ab.src, j.ab.dst, j.ab.dir = j, a, b, AToB
	j.ba.j, j.ba.src, j.ba.dst, j.ba.dir = j, b, a, BToA
	if cfg != nil {
		j.progress = cfg.Progress
		j.idle = cfg.IdleTimeout
	}
	if j.idle > 0 {
		j.startIdleTimer()
	}

	j.wg.Add(1)
	go j.copyBToA()
	j.copyAToB()
	j.wg.Wait()

	if j.idle > 0 {
		j.stopIdleTimer()
	}
	// Both copies and the idle timer are done: nothing else writes j.err.
	if j.err == nil {
		// Both directions saw EOF and passed on their half-close; Close
		// frees the streams. See Join on why errors are ignored.
		_ = a.Close()
		_ = b.Close()
	}
	return Result{AToB: j.ab.n, BToA: j.ba.n, Err: j.err}
}

// Start runs Join on a new goroutine and calls done with its Result when
// both directions have ended. The caller's goroutine is free at once: a
// stream handler that returns lets go of a stack that grew during protocol
// negotiation and handshakes, which an idle forwarded stream would
// otherwise keep for its whole life. Start, like Join, costs two
// goroutines while the streams are open.
func Start(a, b Stream, cfg *Config, done func(Result)) {
	go func() {
		res := Join(a, b, cfg)
		if done != nil {
			done(res)
		}
	}()
}

// joiner is the state of one Join. It is one allocation, small read
// buffers included, and it is all that an idle joined pair keeps on the
// heap apart from the streams themselves.
//
// Keep it at most 2304 bytes, a malloc size class; the next class is 2688.
// That is why a and b are not stored again outside the copiers.
type joiner struct {
	progress func(Direction, int)
	idle     time.Duration

	wg sync.WaitGroup // the b→a goroutine

	mu  sync.Mutex
	err error // first failure; written under mu, read by Join after wg.Wait

	// Idle timer state; see startIdleTimer. timer and timerStopped are
	// guarded by mu.
	start        time.Time    // monotonic origin for last
	last         atomic.Int64 // time of the last activity, as ns since start
	timer        *time.Timer
	timerStopped bool
	timerRuns    sync.WaitGroup // armed or running timer callbacks

	ab, ba copier
}

// copier is one direction of a Join.
type copier struct {
	j        *joiner
	src, dst Stream
	dir      Direction
	n        int64 // bytes written to dst
	small    [smallBufSize]byte
}

// copyAToB and copyBToA exist so that a goroutine dump says which
// direction a blocked copy is.

func (j *joiner) copyAToB() {
	if err := j.ab.copy(); err != nil {
		j.fail(err)
	}
}

func (j *joiner) copyBToA() {
	defer j.wg.Done()
	if err := j.ba.copy(); err != nil {
		j.fail(err)
	}
}

// fail records the first error and resets both streams, which carries the
// failure to both peers and makes the other direction's blocked Read or
// Write return.
func (j *joiner) fail(err error) {
	j.mu.Lock()
	first := j.err == nil
	if first {
		j.err = err
	}
	j.mu.Unlock()
	if first {
		_ = j.ab.src.Reset()
		_ = j.ab.dst.Reset()
	}
}

// copy moves bytes from src to dst until EOF or an error.
//
// Buffer heuristic. The copy waits in Read on the small buffer that lives
// in the copier, because most of a forwarded stream's life is spent
// waiting and a 32 KiB buffer per blocked Read is what made naive
// forwarding cost ~76 KB per idle stream. When a Read fills the small
// buffer, more data is very likely already queued, so the copy borrows a
// large buffer from the pool for the next Read. It keeps the large buffer
// only while Reads fill it completely. A Read that returns less than the
// buffer holds means the stream's receive queue has been drained: the next
// Read may block, possibly for a long time, so the large buffer goes back
// to the pool first and the copy waits on the small one again.
//
// A threshold lower than "full" (say, keep the large buffer while reads
// return more than the small buffer holds) would be kinder to senders of
// mid-sized messages, but the last read of a burst returns an arbitrary
// remainder, so nearly every stream that ever carried a burst would go
// idle holding 32 KiB. With "full", an idle stream holds a large buffer
// only when the last read of its last burst happened to fill it exactly,
// and it gives it back on its next read.
//
// The price is paid when the copy is faster than the sender: each
// drained read is followed by a 1 KiB read and write before the large
// buffer is taken again, so one incoming frame may leave as two. Measured
// in CPU for the whole A, M and B process per GB carried (loopback, TCP,
// against io.Copy both ways): about +5-10% with 1 MiB writes, about +30%
// with a sender that writes 4 KiB messages; no difference seen over QUIC.
func (c *copier) copy() error {
	buf := c.small[:]
	large := false
	for {
		nr, rerr := c.src.Read(buf)
		if nr > 0 {
			c.j.touch()
			nw, werr := c.dst.Write(buf[:nr])
			if nw > 0 {
				c.n += int64(nw)
				c.j.touch()
				if c.j.progress != nil {
					c.j.progress(c.dir, nw)
				}
			}
			if werr == nil && nw != nr {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				if large {
					putLarge(buf)
				}
				return &Error{Dir: c.dir, Op: "write", Err: werr}
			}
		}
		if rerr != nil {
			if large {
				putLarge(buf)
			}
			// io.EOF itself, as io.Copy does: io.Reader must return it
			// unwrapped, and a wrapped EOF is not a clean end.
			if rerr == io.EOF {
				// A half-close is traffic too: without this, an idle
				// timer firing between the last EOF and Join's return
				// would reset a pair that ended cleanly.
				c.j.touch()
				// See Join on why a failure is ignored. If dst was
				// reset, the other direction's Read reports it.
				_ = c.dst.CloseWrite()
				return nil
			}
			return &Error{Dir: c.dir, Op: "read", Err: rerr}
		}
		switch {
		case !large && nr == len(buf):
			buf = getLarge()
			large = true
		case large && nr < len(buf):
			putLarge(buf)
			buf = c.small[:]
			large = false
		}
	}
}

// largeInUse counts large buffers currently borrowed, so tests can check
// that idle streams give them back.
var largeInUse atomic.Int64

// The large buffers come from go-buffer-pool's global pool, which yamux
// and the security transports also use, so buffers freed by one are
// reused by the others.
func getLarge() []byte {
	largeInUse.Add(1)
	return pool.Get(largeBufSize)
}

func putLarge(b []byte) {
	largeInUse.Add(-1)
	pool.Put(b)
}

// touch records activity for the idle timer. It is a clock read and an
// atomic store, and only when IdleTimeout is set.
func (j *joiner) touch() {
	if j.idle > 0 {
		j.last.Store(int64(time.Since(j.start)))
	}
}

// startIdleTimer arms the one timer this Join uses for IdleTimeout.
//
// Every armed timer is counted in timerRuns before it is armed, and its
// callback marks it done when it finishes, so stopIdleTimer can wait for a
// callback that has already started: no goroutine of this Join, not even
// the runtime's timer goroutine, outlives Join.
func (j *joiner) startIdleTimer() {
	j.start = time.Now()
	j.mu.Lock()
	defer j.mu.Unlock()
	j.timerRuns.Add(1)
	j.timer = time.AfterFunc(j.idle, j.checkIdle)
}

// checkIdle runs when the idle timer fires. If there was activity since
// it was armed it re-arms itself for the rest of the timeout; otherwise
// the pair is idle and fails.
func (j *joiner) checkIdle() {
	defer j.timerRuns.Done()
	j.mu.Lock()
	if j.timerStopped {
		j.mu.Unlock()
		return
	}
	quiet := time.Since(j.start) - time.Duration(j.last.Load())
	if quiet < j.idle {
		j.timerRuns.Add(1)
		j.timer.Reset(j.idle - quiet)
		j.mu.Unlock()
		return
	}
	j.mu.Unlock()
	j.fail(ErrIdleTimeout)
}

// stopIdleTimer stops the timer and waits for a callback in flight.
// Setting timerStopped under mu guarantees that a callback either re-armed
// the timer before it (and Stop cancels that) or sees the flag and does
// not re-arm.
func (j *joiner) stopIdleTimer() {
	j.mu.Lock()
	j.timerStopped = true
	if j.timer.Stop() {
		j.timerRuns.Done()
	}
	j.mu.Unlock()
	j.timerRuns.Wait()
}

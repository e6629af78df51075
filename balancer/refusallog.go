package balancer

import (
	"log/slog"
	"sync"
	"time"
)

// refusalLogInterval is how often the log sums up refusals of one kind: a
// kind quiet for a whole interval has its next refusal logged at once, in
// full; the ones that follow within the interval are counted, and one line
// with their count ends the interval. Metrics and the events list still see
// every refusal.
const refusalLogInterval = 10 * time.Second

// refusalKey is one kind of refusal in the log: the message and the reason.
type refusalKey struct {
	msg    string
	reason string
}

// refusalWindow is what a kind has gathered since its last line.
type refusalWindow struct {
	start time.Time
	count int
	last  []any // attributes of the last refusal counted
}

// refusalLog turns refusals into log lines without letting whoever causes
// them write the log as fast as they can open streams: a stranger looping
// on /libp2p/balancer/forward, or a peer held by its rate limit, costs a
// line per kind per interval.
type refusalLog struct {
	log *slog.Logger

	mu      sync.Mutex
	closed  bool
	windows map[refusalKey]*refusalWindow
}

func newRefusalLog(log *slog.Logger) *refusalLog {
	return &refusalLog{log: log, windows: map[refusalKey]*refusalWindow{}}
}

// note logs a refusal of kind k with attributes attrs at once when k has
// been quiet, and otherwise counts it for the line that ends the interval.
func (l *refusalLog) note(k refusalKey, attrs []any) {
	l.mu.Lock()
	w := l.windows[k]
	if w != nil && !l.closed {
		w.count++
		w.last = attrs
		l.mu.Unlock()
		return
	}
	if !l.closed {
		l.windows[k] = &refusalWindow{start: time.Now()}
	}
	l.mu.Unlock()
	l.log.Info(k.msg, append([]any{"reason", k.reason}, attrs...)...)
}

// flush writes one line for each kind that counted refusals since its last
// line, and forgets the kinds that counted none, so that their next refusal
// is logged at once. With final, it also stops counting: what comes later
// is logged line by line (only handlers still running at Close).
func (l *refusalLog) flush(final bool) {
	now := time.Now()
	type line struct {
		k refusalKey
		w refusalWindow
	}
	var lines []line
	l.mu.Lock()
	for k, w := range l.windows {
		if w.count > 0 {
			lines = append(lines, line{k, *w})
		}
		if w.count == 0 || final {
			delete(l.windows, k)
			continue
		}
		w.start, w.count, w.last = now, 0, nil
	}
	l.closed = l.closed || final
	l.mu.Unlock()
	for _, ln := range lines {
		l.log.Info(ln.k.msg, "reason", ln.k.reason, "count", ln.w.count, "over", now.Sub(ln.w.start).Round(time.Millisecond),
			slog.Group("last", ln.w.last...))
	}
}

// flushRefusals sums up the refusal log every interval until the balancer
// closes.
func (b *Balancer) flushRefusals() {
	defer b.wg.Done()
	t := time.NewTicker(refusalLogInterval)
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
			b.refusals.flush(false)
		}
	}
}

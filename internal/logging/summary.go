package logging

import (
	"log/slog"
	"sync"
	"time"
)

// SummaryInterval is how often a Summary sums up: a kind quiet for a whole
// interval has its next event logged at once, in full; the ones that follow
// within the interval are counted, and one line with their count ends the
// interval.
const SummaryInterval = 10 * time.Second

// Key is one kind of event in a Summary: the log message and a reason.
type Key struct {
	Msg    string
	Reason string
}

// Summary writes events that others can cause at will (refused streams,
// refused registrations, forged streams) to a logger without letting them
// write the log as fast as they can open streams: the first event of a kind
// is a line at once, the next ones in the same interval one line with their
// count (and the last one's attributes under "last"). Metrics are the place
// for exact counts per event; the lines add up to them. Create it with
// NewSummary and stop it with Close.
type Summary struct {
	log    *slog.Logger
	cancel chan struct{}
	done   chan struct{}

	mu      sync.Mutex
	closed  bool
	windows map[Key]*window
}

// window is what a kind has gathered since its last line.
type window struct {
	start time.Time
	count int
	last  []any // attributes of the last event counted
}

// NewSummary returns a Summary writing to log, with a goroutine that sums
// up every interval until Close.
func NewSummary(log *slog.Logger, interval time.Duration) *Summary {
	s := &Summary{log: log, cancel: make(chan struct{}), done: make(chan struct{}), windows: map[Key]*window{}}
	go s.run(interval)
	return s
}

func (s *Summary) run(interval time.Duration) {
	defer close(s.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.cancel:
			return
		case <-t.C:
			s.flush(false)
		}
	}
}

// Note logs an event of kind k with attributes attrs at once when k has
// been quiet, and otherwise counts it for the line that ends the interval.
func (s *Summary) Note(k Key, attrs ...any) {
	s.mu.Lock()
	w := s.windows[k]
	if w != nil && !s.closed {
		w.count++
		w.last = attrs
		s.mu.Unlock()
		return
	}
	if !s.closed {
		s.windows[k] = &window{start: time.Now()}
	}
	s.mu.Unlock()
	s.log.Info(k.Msg, append([]any{"reason", k.Reason}, attrs...)...)
}

// Close stops the goroutine and writes what was still being counted;
// events noted later are logged one by one (only handlers still running at
// their owner's Close). A second Close does nothing.
func (s *Summary) Close() {
	s.mu.Lock()
	closed := s.closed
	s.closed = true
	s.mu.Unlock()
	if closed {
		return
	}
	close(s.cancel)
	<-s.done
	s.flush(true)
}

// flush writes one line for each kind that counted events since its last
// line, and forgets the kinds that counted none, so that their next event
// is logged at once; with final it forgets them all.
func (s *Summary) flush(final bool) {
	now := time.Now()
	type line struct {
		k Key
		w window
	}
	var lines []line
	s.mu.Lock()
	for k, w := range s.windows {
		if w.count > 0 {
			lines = append(lines, line{k, *w})
		}
		if w.count == 0 || final {
			delete(s.windows, k)
			continue
		}
		w.start, w.count, w.last = now, 0, nil
	}
	s.mu.Unlock()
	for _, ln := range lines {
		s.log.Info(ln.k.Msg, "reason", ln.k.Reason, "count", ln.w.count, "over", now.Sub(ln.w.start).Round(time.Millisecond),
			slog.Group("last", ln.w.last...))
	}
}

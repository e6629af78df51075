package logging

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestSummaryWindows: the first event of a kind is a line at once, the next
// ones one line with their count when the interval ends, and a kind quiet
// for a whole interval is logged at once again.
func TestSummaryWindows(t *testing.T) {
	var buf bytes.Buffer
	s := NewSummary(slog.New(slog.NewTextHandler(&buf, nil)), time.Hour) // intervals ended by hand
	k := Key{Msg: "inbound stream refused", Reason: "rate"}
	lines := func() []string { return strings.Split(strings.TrimSpace(buf.String()), "\n") }

	s.Note(k, "peer", "p1")
	for range 5 {
		s.Note(k, "peer", "p2")
	}
	if got := lines(); len(got) != 1 || !strings.Contains(got[0], "peer=p1") || strings.Contains(got[0], "count=") {
		t.Fatalf("after six events: %q, want the first one only", got)
	}
	s.flush(false) // end of the first interval: the five counted
	if got := lines(); len(got) != 2 || !strings.Contains(got[1], "count=5") || !strings.Contains(got[1], "last.peer=p2") {
		t.Fatalf("after the first interval: %q", got)
	}
	s.flush(false) // a quiet interval: nothing to say, the kind is forgotten
	if got := lines(); len(got) != 2 {
		t.Fatalf("after a quiet interval: %q", got)
	}
	s.Note(k, "peer", "p3")
	if got := lines(); len(got) != 3 || !strings.Contains(got[2], "peer=p3") || strings.Contains(got[2], "count=") {
		t.Fatalf("an event after a quiet interval: %q, want it logged at once", got)
	}
	s.Note(k, "peer", "p4")
	s.Close() // what was counted, then line by line
	s.Close()
	s.Note(k, "peer", "p5")
	if got := lines(); len(got) != 5 || !strings.Contains(got[3], "count=1") || !strings.Contains(got[4], "peer=p5") {
		t.Fatalf("around Close: %q", got)
	}
}

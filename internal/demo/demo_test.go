package demo_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/demo"
)

func TestRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := demo.Run(ctx, demo.Options{Out: &out, TTL: time.Second}); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, step := range demo.Steps {
		if !strings.Contains(out.String(), " "+step+"]") {
			t.Fatalf("narration lacks step %s:\n%s", step, out.String())
		}
	}
	// Step 1 names backend C only as one to come (issue 14: it spoke of C
	// as if the reader knew it).
	first := out.String()[:strings.Index(out.String(), "[2/")]
	if !strings.Contains(first, "C, a third backend that joins in step 6") {
		t.Fatalf("step 1 does not introduce C as a backend to come:\n%s", first)
	}
}

// TestStepError: a demo cut short names the step it was in.
func TestStepError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	err := demo.Run(ctx, demo.Options{TTL: 5 * time.Second})
	se, ok := err.(*demo.StepError)
	if !ok || se.Step == "" {
		t.Fatalf("err = %v, want a *StepError", err)
	}
}

package main

import (
	"context"
	"testing"

	"github.com/libp2p-balancer/libp2p-balancer/bench/internal/harness"
)

// TestServeSmoke runs the serve mode small: `balancer serve` built and run
// with its defaults, 20 peers holding 100 streams, every one echoed whole.
func TestServeSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs cmd/balancer")
	}
	cfg := harness.DefaultServeConfig()
	cfg.Peers, cfg.Streams = 20, 100
	rep, err := harness.RunServe(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Connected != 20 || rep.Held != 100 || rep.Echoed != 100 {
		t.Fatalf("%d peers connected, %d streams held, %d echoed; want 20, 100, 100", rep.Connected, rep.Held, rep.Echoed)
	}
	if rep.Loaded.RSS == 0 || rep.Loaded.HeapInuse == 0 || rep.Loaded.Goroutines == 0 {
		t.Fatalf("no process figures: %+v", rep.Loaded)
	}
}

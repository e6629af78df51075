package main

import (
	"context"
	"os"
	"testing"

	"github.com/libp2p-balancer/libp2p-balancer/bench/internal/harness"
)

// TestMain lets the test binary serve as the harness's child agent, as the
// bench binary does, for the separate-process smoke run.
func TestMain(m *testing.M) {
	if harness.IsChild() {
		os.Exit(harness.ChildMain())
	}
	os.Exit(m.Run())
}

// TestSmoke runs every setup and workload at tiny sizes over TCP and QUIC,
// as `go run ./bench -smoke` does, so that `go test ./...` keeps the
// harness working. It checks that everything ran, not how fast.
func TestSmoke(t *testing.T) {
	cfg := harness.SmokeConfig()
	rep, err := harness.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range cfg.Transports {
		for _, s := range cfg.Setups {
			m := rep.Median[tr][s]
			for _, k := range []string{"bulk_MBps", "parallel_MBps", "rr_streams_per_s", "rr32_streams_per_s", "idle_goroutines_per_stream", "rr_mid_cpu_ms_per_stream"} {
				if !harness.IsServe(s) && k == "rr_mid_cpu_ms_per_stream" {
					continue // in-process, only `balancer serve` has a process of its own
				}
				if harness.IsServe(s) && k == "idle_goroutines_per_stream" {
					continue // the serve mode's job
				}
				if _, ok := m[k]; !ok {
					t.Errorf("%s %s: no %s", tr, s, k)
				}
			}
		}
		if _, ok := rep.Median[tr][harness.LBIn]["reg_extend_ms"]; !ok {
			t.Errorf("%s: no registration figures", tr)
		}
	}
}

// TestSmokeSeparate runs the balancer in a child process (this test
// binary, see TestMain) on one transport.
func TestSmokeSeparate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	cfg := harness.SmokeConfig()
	cfg.Separate = true
	cfg.Transports = []string{"tcp"}
	cfg.Setups = []string{harness.Direct, harness.LBIn}
	cfg.Workloads = []string{harness.Bulk, harness.Idle}
	rep, err := harness.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rep.Median["tcp"][harness.LBIn]["bulk_mid_cpu_s_per_GB"]; !ok {
		t.Error("no CPU figure from the balancer's own process")
	}
}

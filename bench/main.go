// Command bench compares libp2p-balancer with a direct libp2p stream and
// with circuit relay v2 on this machine, and prints the ratios (issue 6).
//
//	go run ./bench                       # full run, TCP and QUIC, in one process
//	go run ./bench -separate             # balancer/relay in its own process
//	go run ./bench -netns                # three namespaces with netem delay
//	go run ./bench -smoke                # every setup and workload, tiny, for CI
//	go run ./bench -serve                # `balancer serve` as operators run it: 1,000 peers, 20,000 streams
//	go run ./bench -json out.json -svg docs/performance.svg
//
// docs/performance.md explains each figure and what limits it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/bench/internal/harness"
)

func main() {
	if harness.IsChild() {
		os.Exit(harness.ChildMain())
	}
	os.Exit(run(os.Args[1:]))
}

// run is the command: it parses args, measures, and writes the report. It
// returns the exit code.
func run(args []string) int {
	if serving(args) {
		return runServe(args)
	}
	cfg, out, code := parseFlags(args)
	if code >= 0 {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	rep, err := harness.Run(ctx, cfg)
	if errors.Is(err, harness.ErrNoNetns) {
		fmt.Fprintln(os.Stderr, "bench: -netns skipped:", err)
		return 0
	}
	if rep == nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if err != nil && len(rep.Rows) == 0 && len(rep.Errors) == 0 {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	runErr := err
	command := strings.TrimSpace("go run ./bench " + strings.Join(args, " "))
	if err := out.write(rep, command); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if cfg.Log != nil {
		fmt.Fprintf(cfg.Log, "done in %v; %d of %d targets missed\n", time.Since(start).Round(time.Second), len(rep.Failed()), len(rep.Targets))
	}
	if runErr != nil {
		// Something did not run: the smoke run in CI must fail.
		fmt.Fprintln(os.Stderr, "bench:", runErr)
		return 1
	}
	return 0
}

// outputs names the files the report is written to besides stdout; an
// empty name writes none.
type outputs struct {
	json, svg, md string
}

// write prints the Markdown tables to stdout and writes each requested
// file. command is the command line shown in the Markdown.
func (o outputs) write(rep *harness.Report, command string) error {
	rep.Markdown(os.Stdout, command)
	if o.md != "" {
		if err := writeFile(o.md, func(f *os.File) error { rep.Markdown(f, command); return nil }); err != nil {
			return err
		}
	}
	if o.json != "" {
		if err := writeFile(o.json, func(f *os.File) error { return rep.JSON(f) }); err != nil {
			return err
		}
	}
	if o.svg != "" {
		if err := writeFile(o.svg, func(f *os.File) error { return rep.SVG(f) }); err != nil {
			return err
		}
	}
	return nil
}

// parseFlags turns args into the harness configuration and the output
// files. code is the exit code when the command is already done (a flag
// error, or -replot), and -1 when it should go on to measure.
func parseFlags(args []string) (cfg harness.Config, out outputs, code int) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	d := harness.DefaultConfig()
	var (
		smoke      = fs.Bool("smoke", false, "every setup and workload at tiny sizes, one run (CI); other flags still apply")
		transports = fs.String("transports", strings.Join(d.Transports, ","), "comma-separated: tcp, quic, webtransport, webrtc-direct")
		setups     = fs.String("setups", strings.Join(d.Setups, ","), "comma-separated: "+strings.Join(harness.AllSetups, ", "))
		workloads  = fs.String("workloads", strings.Join(d.Workloads, ","), "comma-separated: "+strings.Join(harness.AllWorkloads, ", "))
		runs       = fs.Int("runs", d.Runs, "runs per figure; each figure is the median")
		bulk       = fs.String("bulk", size(d.BulkSize), "bulk: bytes on one stream, one way (suffix KiB, MiB, GiB)")
		parStreams = fs.Int("par-streams", d.ParStreams, "parallel: concurrent streams")
		parSize    = fs.String("par-size", size(d.ParSize), "parallel: bytes per stream")
		rr         = fs.Int("rr", d.RRCount, "request/response: sequential new streams per run")
		rrSize     = fs.Int("rr-size", d.RRSize, "request/response: bytes each way")
		rrWorkers  = fs.Int("rr-workers", d.RRWorkers, "rr32: request/response streams open at once")
		idle       = fs.Int("idle", d.IdleStreams, "idle: concurrent streams held open")
		idlePer    = fs.Int("idle-per-conn", d.IdlePerConnQUIC, "idle over QUIC: streams per connection (go-libp2p caps a QUIC connection at 256)")
		reg        = fs.Int("reg", d.RegRoutes, "registration: routes (about 300 at most: each is advertised in the balancer's identify message, capped at 4 KiB)")
		regStep    = fs.Int("reg-step", d.RegStep, "registration: routes added per request")
		separate   = fs.Bool("separate", false, "run the balancer (and the relay) in a child process, to measure its CPU and memory apart")
		netns      = fs.Bool("netns", false, "run peers, middle node and backends in three network namespaces joined by veth with netem delay (root; needs ip and tc from iproute2)")
		peerDelay  = fs.Duration("peer-delay", d.PeerDelay, "netns: one-way delay between peers and the middle node")
		backDelay  = fs.Duration("back-delay", d.BackDelay, "netns: one-way delay between the middle node and backends")
		jsonOut    = fs.String("json", "", "write the report as JSON to this file")
		svgOut     = fs.String("svg", "", "write the ratio plot as SVG to this file")
		mdOut      = fs.String("md", "", "also write the Markdown tables to this file")
		profDir    = fs.String("cpuprofile", "", "write CPU profiles (one per process, first run of bulk, parallel and rr on each setup) to this directory")
		timeout    = fs.Duration("timeout", d.Timeout, "give up after this long")
		quiet      = fs.Bool("q", false, "no progress lines on stderr")
		replot     = fs.String("replot", "", "draw the SVG (-svg) again from a report written with -json, without measuring")
	)
	if err := fs.Parse(args); err != nil {
		return cfg, out, 2
	}
	if *replot != "" {
		return cfg, out, redraw(*replot, *svgOut)
	}
	cfg = d
	if *smoke {
		cfg = harness.SmokeConfig()
	}
	// With -smoke, only the flags given on the command line override the
	// smoke configuration; without it, every flag (given or default) does.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	apply := func(name string, f func()) {
		if set[name] || !*smoke {
			f()
		}
	}
	apply("transports", func() { cfg.Transports = list(*transports) })
	apply("setups", func() { cfg.Setups = list(*setups) })
	apply("workloads", func() { cfg.Workloads = list(*workloads) })
	apply("runs", func() { cfg.Runs = *runs })
	apply("bulk", func() { cfg.BulkSize, err = parseSize(*bulk, err) })
	apply("par-streams", func() { cfg.ParStreams = *parStreams })
	apply("par-size", func() { cfg.ParSize, err = parseSize(*parSize, err) })
	apply("rr", func() { cfg.RRCount = *rr })
	apply("rr-size", func() { cfg.RRSize = *rrSize })
	apply("rr-workers", func() { cfg.RRWorkers = *rrWorkers })
	apply("idle", func() { cfg.IdleStreams = *idle })
	apply("idle-per-conn", func() { cfg.IdlePerConnQUIC = *idlePer })
	apply("reg", func() { cfg.RegRoutes = *reg })
	apply("reg-step", func() { cfg.RegStep = *regStep })
	apply("timeout", func() { cfg.Timeout = *timeout })
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return cfg, out, 2
	}
	cfg.Separate, cfg.Netns = *separate, *netns
	cfg.PeerDelay, cfg.BackDelay = *peerDelay, *backDelay
	cfg.ProfileDir = *profDir
	if !*quiet {
		cfg.Log = os.Stderr
	}
	if err := validate(&cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return cfg, out, 2
	}
	return cfg, outputs{json: *jsonOut, svg: *svgOut, md: *mdOut}, -1
}

func validate(cfg *harness.Config) error {
	for _, t := range cfg.Transports {
		if !contains([]string{"tcp", "quic", "webtransport", "webrtc-direct"}, t) {
			return fmt.Errorf("unknown transport %q", t)
		}
	}
	for _, s := range cfg.Setups {
		if !contains(harness.AllSetups, s) {
			return fmt.Errorf("unknown setup %q", s)
		}
	}
	for _, w := range cfg.Workloads {
		if !contains(harness.AllWorkloads, w) {
			return fmt.Errorf("unknown workload %q", w)
		}
	}
	if cfg.RegRoutes > 1024 {
		return fmt.Errorf("-reg %d: the balancer accepts at most 1024 protocols per request by default", cfg.RegRoutes)
	}
	if cfg.BulkSize <= 0 || cfg.ParSize <= 0 || cfg.ParStreams <= 0 || cfg.RRCount <= 0 || cfg.IdleStreams <= 0 || cfg.RegRoutes <= 0 {
		return errors.New("sizes and counts must be positive")
	}
	return nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

func list(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func parseSize(s string, prev error) (int64, error) {
	if prev != nil {
		return 0, prev
	}
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.m
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %v", s, err)
	}
	return n * mult, nil
}

func size(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprint(n)
}

func writeFile(path string, f func(*os.File) error) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f(out); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func redraw(from, to string) int {
	if to == "" {
		fmt.Fprintln(os.Stderr, "bench: -replot needs -svg")
		return 2
	}
	f, err := os.Open(from)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer f.Close()
	rep, err := harness.LoadReport(f)
	if err == nil {
		err = writeFile(to, func(f *os.File) error { return rep.SVG(f) })
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

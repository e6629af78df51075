package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/libp2p-balancer/libp2p-balancer/bench/internal/harness"
)

// serving says whether args ask for the serve mode (-serve), which has
// flags of its own.
func serving(args []string) bool {
	for _, a := range args {
		if a == "-serve" || a == "--serve" || a == "-serve=true" || a == "--serve=true" {
			return true
		}
	}
	return false
}

// runServe is `go run ./bench -serve`: `balancer serve` built from
// cmd/balancer and run in its own process with its defaults, a crowd of
// client peers holding idle streams through it (harness.RunServe). It
// returns the exit code.
func runServe(args []string) int {
	d := harness.DefaultServeConfig()
	fs := flag.NewFlagSet("bench -serve", flag.ContinueOnError)
	fs.Bool("serve", true, "run the serve mode")
	transport := fs.String("transport", d.Transport, "tcp or quic: how the peers and the backend reach the balancer")
	peers := fs.Int("peers", d.Peers, "client peers, each its own host")
	streams := fs.Int("streams", d.Streams, "idle streams held at once, spread evenly over the peers")
	jsonOut := fs.String("json", "", "write the report as JSON to this file")
	mdOut := fs.String("md", "", "also write the Markdown to this file")
	hold := fs.Duration("hold", 0, "keep the streams held, idle, this long before echoing them whole (issue 12: 3m)")
	timeout := fs.Duration("timeout", d.Timeout, "give up after this long")
	quiet := fs.Bool("q", false, "no progress lines on stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *transport != "tcp" && *transport != "quic" {
		fmt.Fprintf(os.Stderr, "bench: -transport %q: tcp or quic\n", *transport)
		return 2
	}
	cfg := harness.ServeConfig{Transport: *transport, Peers: *peers, Streams: *streams, Hold: *hold, Timeout: *timeout}
	if !*quiet {
		cfg.Log = os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := harness.RunServe(ctx, cfg)
	if rep == nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	command := strings.TrimSpace("go run ./bench " + strings.Join(args, " "))
	rep.Markdown(os.Stdout, command)
	if *mdOut != "" {
		if werr := writeFile(*mdOut, func(f *os.File) error { rep.Markdown(f, command); return nil }); werr != nil {
			fmt.Fprintln(os.Stderr, "bench:", werr)
			return 1
		}
	}
	if *jsonOut != "" {
		if werr := writeFile(*jsonOut, func(f *os.File) error { return rep.JSON(f) }); werr != nil {
			fmt.Fprintln(os.Stderr, "bench:", werr)
			return 1
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

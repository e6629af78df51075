// Command crowd is test/scale's helper: it runs the client peers, or the
// backend, of the scale test in a process of its own, built without the
// race detector (proctest.Build) so that hundreds of hosts do not eat the
// test's time budget. It talks to the test by lines: it prints what it has
// done ("connected N", "held N", "echoed N", "registered") and waits for
// "go" on standard input before finishing the streams it holds. A failure
// prints "error: ..." and exits 1.
//
//	crowd backend -balancer ADDR -key FILE -proto P
//	crowd peers -balancer ADDR -peers N -streams K -size S -first F -proto P
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/internal/crowd"
	"github.com/libp2p-balancer/libp2p-balancer/internal/keyfile"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: crowd backend|peers [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	var (
		lbAddr  = fs.String("balancer", "", "the balancer's multiaddr, with /p2p/")
		key     = fs.String("key", "", "backend: identity key file")
		proto   = fs.String("proto", "/scale/echo/1.0.0", "the echo protocol")
		peers   = fs.Int("peers", 500, "peers: client hosts")
		streams = fs.Int("streams", 4, "peers: streams held per host")
		size    = fs.Int("size", 16<<10, "peers: bytes each stream echoes")
		first   = fs.Int("first", 1<<10, "peers: bytes echoed while opening, before go")
		timeout = fs.Duration("timeout", 2*time.Minute, "give up after this long")
	)
	_ = fs.Parse(os.Args[2:])
	lb, err := peer.AddrInfoFromString(*lbAddr)
	if err != nil {
		fail(fmt.Errorf("-balancer: %w", err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	switch os.Args[1] {
	case "backend":
		err = runBackend(ctx, *lb, *key, protocol.ID(*proto))
	case "peers":
		err = runPeers(ctx, *lb, protocol.ID(*proto), *peers, *streams, *size, *first)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Println("error:", err)
	os.Exit(1)
}

// runBackend serves proto behind the balancer with the library backend on
// a host with the commands' default limits, until standard input ends.
func runBackend(ctx context.Context, lb peer.AddrInfo, keyPath string, proto protocol.ID) error {
	k, err := keyfile.Load(keyPath)
	if err != nil {
		return err
	}
	h, err := node.New(node.Config{Key: k, LinkPeers: []peer.ID{lb.ID}})
	if err != nil {
		return err
	}
	defer h.Close()
	be, err := backend.New(h, []peer.AddrInfo{lb})
	if err != nil {
		return err
	}
	defer be.Close()
	be.SetStreamHandler(proto, crowd.Echo)
	for !slices.Contains(be.Status()[0].Protocols, proto) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("not registered: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	fmt.Println("registered")
	// Standard input ends when the test does.
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	return nil
}

// runPeers connects the crowd, holds its streams, and on "go" finishes
// them, then has every peer echo one more new stream.
func runPeers(ctx context.Context, lb peer.AddrInfo, proto protocol.ID, n, perPeer, size, first int) error {
	const workers = 64
	c, err := crowd.New(n)
	defer c.Close()
	if err != nil {
		return err
	}
	if err := c.Connect(ctx, lb, workers); err != nil {
		return err
	}
	fmt.Println("connected", c.Connected(lb.ID))
	held, err := c.Hold(ctx, lb.ID, proto, perPeer, size, first, workers)
	if err != nil {
		return err
	}
	fmt.Println("held", len(held))
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if strings.TrimSpace(line) != "go" {
		crowd.Reset(held)
		return fmt.Errorf("waiting for go: read %q, %v", line, err)
	}
	ok, err := crowd.FinishAll(ctx, held, workers*4)
	if err != nil {
		return fmt.Errorf("%d of %d held streams echoed whole; first failure: %w", ok, len(held), err)
	}
	// New streams still go through.
	fresh, err := c.Hold(ctx, lb.ID, proto, 1, size, first, workers)
	if err != nil {
		return fmt.Errorf("after the held streams: %w", err)
	}
	okFresh, err := crowd.FinishAll(ctx, fresh, workers)
	if err != nil {
		return fmt.Errorf("after the held streams: %w", err)
	}
	fmt.Println("echoed", ok+okFresh)
	return nil
}

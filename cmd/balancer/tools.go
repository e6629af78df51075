package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/internal/daemon"
	"github.com/libp2p-balancer/libp2p-balancer/internal/demo"
	"github.com/libp2p-balancer/libp2p-balancer/internal/dial"
	"github.com/libp2p-balancer/libp2p-balancer/internal/keyfile"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

var dialCmd = &command{
	name:    "dial",
	args:    "MULTIADDR PROTOCOL...",
	summary: "open a stream and pipe it to stdin/stdout, like nc",
	about: `Connects to MULTIADDR (ending in /p2p/<peer ID>), opens a stream on the first
PROTOCOL the peer accepts, and copies standard input to the stream and the
stream to standard output. At the end of standard input the stream is
half-closed; the command exits 0 once the peer has closed its side, and
non-zero with one line on standard error when anything fails. Flags go
before MULTIADDR.`,
	flags: func(fs *flag.FlagSet) func([]string) int {
		identity := fs.String("identity", "", "private key `PATH` to dial with, created when missing (default: a new identity each run)")
		timeout := fs.Duration("timeout", dial.DefaultTimeout, "how long connecting and negotiating may take")
		verbose := fs.Bool("verbose", false, "say on standard error which protocol the peer accepted")
		return func(args []string) int {
			if len(args) < 2 {
				return fail("dial", errors.New("want MULTIADDR PROTOCOL... (see balancer dial --help)"))
			}
			cfg := dial.Config{Target: args[0], Timeout: *timeout}
			for _, p := range args[1:] {
				if err := wire.ValidateProtocol(p); err != nil {
					if strings.HasPrefix(p, "-") {
						err = fmt.Errorf("%w (flags go before MULTIADDR)", err)
					}
					return fail("dial", err)
				}
				cfg.Protocols = append(cfg.Protocols, protocol.ID(p))
			}
			if *identity != "" {
				key, _, err := keyfile.LoadOrCreate(*identity)
				if err != nil {
					return fail("dial", err)
				}
				if err := keyfile.CheckMode(*identity); err != nil {
					fmt.Fprintf(os.Stderr, "balancer dial: warning: %v\n", err)
				}
				cfg.Key = key
			}
			if *verbose {
				cfg.Opened = func(p protocol.ID) { fmt.Fprintf(os.Stderr, "balancer dial: stream open on %s\n", p) }
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if err := dial.Run(ctx, cfg, os.Stdin, os.Stdout); err != nil {
				return fail("dial", err)
			}
			return 0
		}
	},
}

var idCmd = &command{
	name:    "id",
	summary: "print the peer ID of a key file (creating it if missing)",
	about: `Prints the peer ID of the private key in --identity, creating a new
Ed25519 key there (mode 0600) when the file does not exist, so that an
operator can write --allow lines for a backend before starting it.`,
	flags: func(fs *flag.FlagSet) func([]string) int {
		identity := fs.String("identity", daemon.DefaultIdentity, "private key `PATH`")
		return func(args []string) int {
			if len(args) > 0 {
				return fail("id", fmt.Errorf("unexpected argument %q", args[0]))
			}
			key, created, err := keyfile.LoadOrCreate(*identity)
			if err != nil {
				return fail("id", err)
			}
			id, err := peerID(key)
			if err != nil {
				return fail("id", err)
			}
			if created {
				fmt.Fprintf(os.Stderr, "balancer id: created a new identity in %s\n", *identity)
			}
			if err := keyfile.CheckMode(*identity); err != nil {
				fmt.Fprintf(os.Stderr, "balancer id: warning: %v\n", err)
			}
			fmt.Println(id)
			return 0
		}
	},
}

func peerID(k crypto.PrivKey) (peer.ID, error) { return peer.IDFromPrivateKey(k) }

var demoCmd = &command{
	name:    "demo",
	summary: "run the whole scenario in one process and narrate it",
	about: `Starts, in this one process and on 127.0.0.1 only, a balancer LB, backends A
(protocols A1, A2) and B (B1, B2), and peers D and E, and narrates: the
registrations with their TTL, D's stream to A1 arriving at A with D as the
remote peer, B's outbound stream to E settling on B2 (E serves only B2), an
extension, and an expiry. Exits 0 when every step succeeded, non-zero naming
the step that failed.`,
	flags: func(fs *flag.FlagSet) func([]string) int {
		ttl := fs.Duration("ttl", 2*time.Second, "route TTL the demo's balancer grants, whole seconds; the demo takes about twice this")
		timeout := fs.Duration("timeout", time.Minute, "give up after this long")
		logLevel := fs.String("log-level", "error", "`LEVEL` of the libraries' logs on standard error: debug, info, warn or error")
		return func(args []string) int {
			if len(args) > 0 {
				return fail("demo", fmt.Errorf("unexpected argument %q", args[0]))
			}
			if *ttl < time.Second {
				return fail("demo", fmt.Errorf("--ttl %v: must be at least 1s", *ttl))
			}
			log, err := newLogger(*logLevel)
			if err != nil {
				return fail("demo", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), *timeout)
			defer cancel()
			ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			fmt.Println("libp2p-balancer demo: one balancer LB, backends A and B, peers D and E, all on 127.0.0.1")
			if err := demo.Run(ctx, demo.Options{Out: os.Stdout, TTL: *ttl, Logger: log}); err != nil {
				var se *demo.StepError
				if errors.As(err, &se) {
					fmt.Fprintf(os.Stderr, "balancer demo: step %q failed: %v\n", se.Step, se.Err)
					return 1
				}
				return fail("demo", err)
			}
			return 0
		}
	},
}

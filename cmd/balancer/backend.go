package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/internal/keyfile"
	"github.com/libp2p-balancer/libp2p-balancer/internal/sidecar"
)

var backendCmd = &command{
	name:    "backend",
	summary: "put local TCP services behind a balancer (sidecar)",
	about: `Runs a backend sidecar: it registers protocols with one or more balancers
and bridges every stream a balancer forwards on a protocol to a new TCP
connection to that protocol's local service (--route). With
--proxy-protocol each such connection starts with a PROXY protocol v2 header
(as HAProxy, nginx and Envoy send) carrying the remote peer's IP and port and,
in TLV 0xE0, its peer ID as text (TLV 0xE1: the libp2p protocol). A remote
peer over QUIC is written as a TCP (STREAM) source with its UDP port, since
nginx ignores the addresses of any other kind; --proxy-protocol-dgram marks
it DGRAM, as the PROXY specification has it. A relayed peer has no address
in the header (UNSPEC), only its peer ID.

--outbound opens a local TCP listener whose every connection is carried
through a balancer as a stream to a remote peer, which sees the balancer's
peer ID. The protocols follow the peer ID; a multiaddr before /p2p/ tells the
balancer where to dial the peer:
  --outbound 127.0.0.1:9000=12D3KooW.../chat/1.0.0,/chat/0.9.0
  --outbound 127.0.0.1:9001=/ip4/203.0.113.7/tcp/4001/p2p/12D3KooW.../chat/1.0.0
On start it prints each outbound listener's address (host:port), one per line.
An outbound listener is unauthenticated: it must be on loopback unless
--outbound-public is given.

Give every balancer instance its own --balancer, even when instances share a
peer ID (one balancer scaled out): the sidecar registers with each. Commas
separate several addresses of one instance. Or give a DNS name that lists the
instances, /dnsaddr/DOMAIN (TXT records dnsaddr=MULTIADDR on _dnsaddr.DOMAIN)
or /dns/DOMAIN/tcp/PORT/p2p/PEER_ID (A/AAAA records, as a Kubernetes headless
Service has): it is resolved again every --resolve-interval, the sidecar
registers with every instance it lists (one address, one instance) and drains
an instance that leaves it: routes released at once, connection closed when
its streams end. A failed or empty answer keeps the instances known.
Registrations are renewed at half their TTL and restored by themselves after
a balancer restarts.

SIGINT or SIGTERM releases the routes, lets streams in flight finish for up
to --drain-timeout, and exits 0.`,
	flags: func(fs *flag.FlagSet) func([]string) int {
		identity := fs.String("identity", "backend.key", "private key `PATH`, created (Ed25519, mode 0600) when missing;\nthe balancers allow its peer ID (see balancer id)")
		var balancers, routes, outbound []string
		fs.Var(newList(&balancers), "balancer", "balancer instance to register with: `MULTIADDR` ending in /p2p/PEER_ID,\nor several addresses of one instance joined by commas, or a DNS name\nlisting instances: /dnsaddr/DOMAIN or /dns/DOMAIN/tcp/PORT/p2p/PEER_ID (repeatable)")
		resolve := fs.Duration("resolve-interval", backend.DefaultResolveInterval, "how often DNS names given to --balancer are resolved again\n(the record TTLs are not read; set this below them)")
		fs.Var(newList(&routes), "route", "`PROTOCOL=HOST:PORT`: bridge streams on PROTOCOL to this TCP service (repeatable)")
		fs.Var(newList(&outbound), "outbound", "`HOST:PORT=[MULTIADDR/p2p/]PEER_ID/PROTO[,/PROTO...]`: listen on HOST:PORT and carry\neach connection to PEER_ID on the first PROTO it accepts (repeatable)")
		outboundPublic := fs.Bool("outbound-public", false, "allow an --outbound listener off loopback: whoever reaches it speaks as the balancer's peer ID,\nunauthenticated")
		proxy := fs.Bool("proxy-protocol", false, "start each connection to a --route service with a PROXY protocol v2 header")
		proxyDgram := fs.Bool("proxy-protocol-dgram", false, "in that header, mark a remote peer over QUIC (UDP) as DGRAM rather than STREAM\n(the PROXY specification's choice; nginx then ignores the addresses)")
		ttl := fs.Duration("ttl", 0, "route TTL to ask the balancers for (0: their default)")
		drain := fs.Duration("drain-timeout", 30*time.Second, "on SIGINT/SIGTERM, how long streams in flight may take to finish")
		dialTimeout := fs.Duration("dial-timeout", sidecar.DefaultDialTimeout, "how long connecting to a --route service may take")
		logLevel := fs.String("log-level", "info", "`LEVEL`: debug, info, warn or error")

		return func(args []string) int {
			if len(args) > 0 {
				return fail("backend", fmt.Errorf("unexpected argument %q (flags only)", args[0]))
			}
			cfg := sidecar.Config{ProxyProtocol: *proxy, TTL: *ttl, DialTimeout: *dialTimeout, OutboundPublic: *outboundPublic, ProxyProtocolDatagram: *proxyDgram,
				ResolveInterval: *resolve}
			for _, s := range balancers {
				if err := cfg.AddBalancer(s); err != nil {
					return fail("backend", err)
				}
			}
			for _, s := range routes {
				r, err := sidecar.ParseRoute(s)
				if err != nil {
					return fail("backend", err)
				}
				cfg.Routes = append(cfg.Routes, r)
			}
			for _, s := range outbound {
				o, err := sidecar.ParseOutbound(s)
				if err != nil {
					return fail("backend", err)
				}
				cfg.Outbound = append(cfg.Outbound, o)
			}
			// Before the identity file is touched.
			if err := cfg.Check(); err != nil {
				return fail("backend", err)
			}
			log, err := newLogger(*logLevel)
			if err != nil {
				return fail("backend", err)
			}
			cfg.Logger = log
			key, created, err := keyfile.LoadOrCreate(*identity)
			if err != nil {
				return fail("backend", err)
			}
			cfg.Key = key

			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
			defer signal.Stop(sigs)
			sc, err := sidecar.Start(cfg)
			if err != nil {
				return fail("backend", err)
			}
			if created {
				id, _ := peer.IDFromPrivateKey(key)
				log.Info("created a new identity", "file", *identity, "peer", id)
			}
			if err := keyfile.CheckMode(*identity); err != nil {
				log.Warn("identity file is open to other users", "err", err)
			}
			for _, a := range sc.OutboundAddrs() {
				fmt.Println(a)
			}
			sig := <-sigs
			log.Info("signal received; releasing routes and draining", "signal", sig, "drain_timeout", *drain)
			ctx, cancel := context.WithTimeout(context.Background(), *drain)
			defer cancel()
			go func() {
				select {
				case <-sigs:
					cancel()
				case <-ctx.Done():
				}
			}()
			if err := sc.Shutdown(ctx); err != nil {
				log.Warn("stopped with streams cut", "err", err)
			}
			log.Info("stopped")
			return 0
		}
	},
}

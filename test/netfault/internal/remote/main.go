// Command remote is the remote peer of the netfault tests, run in its own
// network namespace: an ordinary libp2p peer that can serve an echo
// protocol (the target of a backend's outbound streams) and watch which
// protocols a balancer advertises through identify (what every remote peer
// of the balancer sees).
//
//	remote --listen MULTIADDR --echo PROTO
//	remote --watch MULTIADDR/p2p/ID --proto PROTO
//	remote --lanes N --key FILE --to MULTIADDR/p2p/ID
//
// It prints one line per fact on standard output:
//
//	addr MULTIADDR/p2p/ID         each listen address, at start
//	echo PROTO BYTES SHA256       an echo stream ended; what it received
//	connected UNIXNANO            the watched peer is connected
//	disconnected UNIXNANO         ... is not
//	served UNIXNANO PROTO         the watched peer advertises PROTO
//	unserved UNIXNANO PROTO       ... no longer does
//	lanes N                       with --lanes: N connections were tried
//
// It runs until killed.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/internal/keyfile"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
)

// out serialises lines on standard output.
var out struct {
	sync.Mutex
}

func say(format string, args ...any) {
	out.Lock()
	defer out.Unlock()
	fmt.Printf(format+"\n", args...)
}

func main() {
	var listen []ma.Multiaddr
	flag.Func("listen", "`MULTIADDR` to listen on (repeatable)", func(s string) error {
		a, err := ma.NewMultiaddr(s)
		listen = append(listen, a)
		return err
	})
	echo := flag.String("echo", "", "serve `PROTO` by echoing each stream")
	watch := flag.String("watch", "", "connect to `MULTIADDR/p2p/ID` and report what its identify says")
	proto := flag.String("proto", "", "with --watch: the `PROTO` to report on")
	lanes := flag.Int("lanes", 0, "open `N` connections to --to, each from a host of its own with --key's identity, as a backend's QUIC lanes are")
	key := flag.String("key", "", "with --lanes: the identity key `FILE`")
	to := flag.String("to", "", "with --lanes: the `MULTIADDR/p2p/ID` to connect to")
	flag.Parse()
	if *lanes > 0 {
		if err := runLanes(*lanes, *key, *to); err != nil {
			fmt.Fprintln(os.Stderr, "remote:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(listen, protocol.ID(*echo), *watch, protocol.ID(*proto)); err != nil {
		fmt.Fprintln(os.Stderr, "remote:", err)
		os.Exit(1)
	}
}

func run(listen []ma.Multiaddr, echo protocol.ID, watch string, proto protocol.ID) error {
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return err
	}
	var target *peer.AddrInfo
	var link []peer.ID
	if watch != "" {
		if target, err = node.ParseAddrInfo(watch); err != nil {
			return err
		}
		link = append(link, target.ID)
	}
	h, err := node.New(node.Config{Key: k, Listen: listen, LinkPeers: link})
	if err != nil {
		return err
	}
	defer h.Close()
	if echo != "" {
		h.SetStreamHandler(echo, echoStream)
	}
	addrs, err := node.Addrs(h, listen)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		say("addr %s", a)
	}
	if target == nil {
		select {}
	}
	return watchPeer(h, *target, proto)
}

// echoStream writes back what it reads, half-closes at EOF, and reports
// what it received.
func echoStream(s network.Stream) {
	hash := sha256.New()
	n, err := io.Copy(s, io.TeeReader(s, hash))
	if err != nil {
		s.Reset()
		say("echo %s failed after %d bytes: %v", s.Protocol(), n, err)
		return
	}
	s.CloseWrite()
	say("echo %s %d %s", s.Protocol(), n, hex.EncodeToString(hash.Sum(nil)))
	s.Close()
}

// watchPeer keeps a connection to target (redialling when it is lost) and
// reports its connectedness and whether its identify lists proto.
func watchPeer(h host.Host, target peer.AddrInfo, proto protocol.ID) error {
	sub, err := h.EventBus().Subscribe([]any{
		new(event.EvtPeerConnectednessChanged),
		new(event.EvtPeerIdentificationCompleted),
		new(event.EvtPeerProtocolsUpdated),
	})
	if err != nil {
		return err
	}
	defer sub.Close()
	redial := make(chan struct{}, 1)
	redial <- struct{}{}
	go func() {
		retry := time.NewTicker(250 * time.Millisecond)
		defer retry.Stop()
		for range redial {
			for h.Network().Connectedness(target.ID) != network.Connected {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := h.Connect(network.WithForceDirectDial(ctx, "watch"), target)
				cancel()
				if err == nil {
					break
				}
				<-retry.C
			}
		}
	}()
	served, known := false, false
	for ev := range sub.Out() {
		now := time.Now().UnixNano()
		switch e := ev.(type) {
		case event.EvtPeerConnectednessChanged:
			if e.Peer != target.ID {
				continue
			}
			if e.Connectedness == network.Connected {
				say("connected %d", now)
				continue
			}
			say("disconnected %d", now)
			select {
			case redial <- struct{}{}:
			default:
			}
			continue
		case event.EvtPeerIdentificationCompleted:
			if e.Peer != target.ID {
				continue
			}
		case event.EvtPeerProtocolsUpdated:
			if e.Peer != target.ID {
				continue
			}
		}
		ps, _ := h.Peerstore().SupportsProtocols(target.ID, proto)
		if has := len(ps) > 0; known && has == served {
			continue
		} else {
			served, known = has, true
		}
		if served {
			say("served %d %s", now, proto)
		} else {
			say("unserved %d %s", now, proto)
		}
	}
	return nil
}

// runLanes connects n hosts with the identity in keyFile to the peer at to,
// one after the other, as a backend opening QUIC lanes does from one IP
// address, and holds them until killed. Which ones the other side kept is
// for it to say: one that a per-IP limit refuses may complete its
// handshake here before the other side closes it.
func runLanes(n int, keyFile, to string) error {
	k, _, err := keyfile.LoadOrCreate(keyFile)
	if err != nil {
		return err
	}
	target, err := node.ParseAddrInfo(to)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		h, err := node.New(node.Config{Key: k, LinkPeers: []peer.ID{target.ID}})
		if err != nil {
			return err
		}
		defer h.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := h.Connect(ctx, *target); err != nil {
			say("lane %d failed: %v", i, err)
		}
		cancel()
	}
	say("lanes %d", n)
	select {}
}

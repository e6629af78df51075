package dial_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/internal/dial"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
)

// target starts a peer serving /upper (answers in upper case after the
// caller's half-close) and /greet (greets, closes, ignores input), and
// returns its address.
func target(t *testing.T) string {
	t.Helper()
	k, _, _ := crypto.GenerateEd25519Key(nil)
	h, err := node.New(node.Config{Key: k, Listen: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	h.SetStreamHandler("/upper", func(s network.Stream) {
		b, err := io.ReadAll(s)
		if err != nil {
			s.Reset()
			return
		}
		s.Write(bytes.ToUpper(b))
		s.Close()
	})
	h.SetStreamHandler("/greet", func(s network.Stream) {
		io.WriteString(s, "hi\n")
		s.Close()
	})
	addrs, err := node.Addrs(h, nil)
	if err != nil {
		t.Fatal(err)
	}
	return addrs[0].String()
}

func TestDial(t *testing.T) {
	addr := target(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	var opened protocol.ID
	cfg := dial.Config{Target: addr, Protocols: []protocol.ID{"/nope", "/upper"}, Opened: func(p protocol.ID) { opened = p }}
	if err := dial.Run(ctx, cfg, strings.NewReader("hello"), &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "HELLO" || opened != "/upper" {
		t.Fatalf("got %q on %s", out.String(), opened)
	}

	// Empty input: the stream is half-closed before anything is written.
	out.Reset()
	if err := dial.Run(ctx, dial.Config{Target: addr, Protocols: []protocol.ID{"/upper"}}, strings.NewReader(""), &out); err != nil {
		t.Fatalf("empty input: %v", err)
	}

	// The peer closes first: Run returns without waiting for input.
	out.Reset()
	pr, pw := io.Pipe()
	defer pw.Close()
	if err := dial.Run(ctx, dial.Config{Target: addr, Protocols: []protocol.ID{"/greet"}}, pr, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hi\n" {
		t.Fatalf("got %q", out.String())
	}

	err := dial.Run(ctx, dial.Config{Target: addr, Protocols: []protocol.ID{"/nope"}}, strings.NewReader(""), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "/nope") {
		t.Fatalf("unsupported protocol: err = %v", err)
	}
	err = dial.Run(ctx, dial.Config{Target: "/ip4/127.0.0.1/tcp/1", Protocols: []protocol.ID{"/x"}}, strings.NewReader(""), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "/p2p/") {
		t.Fatalf("address without peer ID: err = %v", err)
	}
}

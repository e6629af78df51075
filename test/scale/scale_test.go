// Package scale_test checks that `balancer serve` with nothing configured
// carries a crowd: 500 remote peers holding 2,000 echo streams to one
// backend at once, every byte checked, while one greedy peer that opens more
// streams than its limit is refused with the documented code
// (docs/spec.md, "Host limits"). The balancer, the backend and the client
// peers run as separate processes built without the race detector
// (internal/proctest); only the greedy peer runs in the test.
package scale_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// bin and crowdBin are the binaries under test, built once by TestMain.
var bin, crowdBin string

func TestMain(m *testing.M) {
	proctest.Main(m,
		proctest.Binary{Name: "balancer", Pkg: "../../cmd/balancer", Path: &bin},
		proctest.Binary{Name: "crowd", Pkg: "./internal/crowd", Path: &crowdBin})
}

const echoProto protocol.ID = "/scale/echo/1.0.0"

// start runs path with args, its standard input kept open (the crowd waits
// for "go" on it).
func start(t *testing.T, name, path string, args ...string) *proctest.Proc {
	t.Helper()
	return proctest.Start(t, name, exec.Command(path, args...), proctest.Options{Pipe: true})
}

// expect waits for p's next line starting with word and returns the word
// after it, if any.
func expect(t *testing.T, p *proctest.Proc, word string, timeout time.Duration) string {
	t.Helper()
	f := p.Next(t, timeout, word, "error:")
	if f[0] != word {
		t.Fatalf("%s: %s", p.Name, strings.Join(f, " "))
	}
	if len(f) > 1 {
		return f[1]
	}
	return ""
}

// metric reads one sample of the balancer's /metrics: the sum of the
// series of name whose labels contain every one of labels.
func metric(t *testing.T, admin, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		series, value, ok := strings.Cut(line, " ")
		if !ok || (series != name && !strings.HasPrefix(series, name+"{")) {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(series, l)
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil && match {
			sum += v
		}
	}
	return sum
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestCrowd: `balancer serve` with its defaults (only the backend allowed,
// and an admin port) accepts 500 remote peers and carries 2,000 concurrent
// streams from them to one backend, each echoing 16 KiB byte-exact; a peer
// that opens more than wire.PeerStreams streams has the next one reset with
// 0x1002 (resource limit exceeded) while the crowd's streams, held all along,
// and new ones still go through.
func TestCrowd(t *testing.T) {
	const peers, perPeer = 500, 4
	began := time.Now()
	dir := t.TempDir()
	beKey, beID := proctest.KeyFile(t, dir, "backend.key")
	admin := freePort(t)
	lb := start(t, "balancer", bin, "serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--admin", admin,
		"--allow", beID.String()+"="+string(echoProto))
	// serve prints its listen address, with /p2p/, first.
	full := lb.Lines(t, 1, 20*time.Second)[0]
	lbInfo, err := peer.AddrInfoFromString(full)
	if err != nil {
		t.Fatal(err)
	}

	be := start(t, "backend", crowdBin, "backend", "-balancer", full, "-key", beKey, "-proto", string(echoProto))
	expect(t, be, "registered", 30*time.Second)

	c := start(t, "crowd", crowdBin, "peers", "-balancer", full, "-peers", strconv.Itoa(peers),
		"-streams", strconv.Itoa(perPeer), "-size", "16384", "-first", "1024", "-proto", string(echoProto))
	if got := expect(t, c, "connected", 60*time.Second); got != strconv.Itoa(peers) {
		t.Fatalf("%s of %d peers connected", got, peers)
	}
	if got := expect(t, c, "held", 60*time.Second); got != strconv.Itoa(peers*perPeer) {
		t.Fatalf("%s of %d streams held", got, peers*perPeer)
	}
	if n := metric(t, admin, "libp2p_balancer_streams_active", `direction="inbound"`); n < peers*perPeer {
		t.Fatalf("the balancer counts %v inbound streams in flight, want at least %d", n, peers*perPeer)
	}
	t.Logf("%d peers connected, %d streams held after %v", peers, peers*perPeer, time.Since(began).Round(time.Millisecond))

	// The greedy peer: its own limits are off, so that only the balancer's
	// can stop it.
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.InfiniteLimits))
	if err != nil {
		t.Fatal(err)
	}
	greedy, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableRelay(), libp2p.ResourceManager(rm))
	if err != nil {
		t.Fatal(err)
	}
	defer greedy.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := greedy.Connect(ctx, *lbInfo); err != nil {
		t.Fatal(err)
	}
	opened, refusal := 0, error(nil)
	for opened <= wire.PeerStreams+8 && refusal == nil {
		s, err := greedy.NewStream(ctx, lbInfo.ID, echoProto)
		if err == nil {
			defer s.Reset()
			_ = s.SetDeadline(time.Now().Add(15 * time.Second))
			_, err = s.Write([]byte{1})
			if err == nil {
				_, err = io.ReadFull(s, make([]byte, 1))
			}
		}
		if err != nil {
			refusal = err
			break
		}
		opened++
	}
	var se *network.StreamError
	if !errors.As(refusal, &se) || se.ErrorCode != network.StreamResourceLimitExceeded {
		t.Fatalf("the greedy peer's stream %d ended with %v, want a reset with code 0x%x", opened+1, refusal, network.StreamResourceLimitExceeded)
	}
	// A few of the peer's streams may be go-libp2p's own (identify).
	if opened < wire.PeerStreams-8 || opened > wire.PeerStreams {
		t.Fatalf("the greedy peer was refused after %d streams, want about %d", opened, wire.PeerStreams)
	}
	if n := metric(t, admin, "libp2p_balancer_resource_refusals_total", `resource="stream"`, `limit="peer"`); n < 1 {
		t.Fatalf("no per-peer stream refusal counted in /metrics")
	}
	t.Logf("the greedy peer held %d streams; the next one: %v", opened, refusal)

	// The crowd's held streams finish, and each peer echoes a new one,
	// while the greedy peer still holds its streams.
	fmt.Fprintln(c.Stdin, "go")
	if got := expect(t, c, "echoed", 60*time.Second); got != strconv.Itoa(peers*perPeer+peers) {
		t.Fatalf("%s streams echoed whole, want %d", got, peers*perPeer+peers)
	}
	t.Logf("all echoed byte-exact after %v", time.Since(began).Round(time.Millisecond))
}

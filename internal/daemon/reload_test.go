package daemon_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
	"github.com/libp2p-balancer/libp2p-balancer/internal/daemon"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// register sends one routing request from h and returns the status.
func register(t *testing.T, h host.Host, lb peer.ID, protos ...string) pb.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, lb, wire.RoutingRequestID)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if err := wire.WriteMsg(s, &pb.RoutingRequest{Protocols: protos}); err != nil {
		t.Fatal(err)
	}
	var resp pb.RoutingResponse
	if err := wire.NewReader(s).ReadMsg(&resp); err != nil {
		t.Fatal(err)
	}
	return resp.Status
}

// TestReload: a reload applies the allow list and the log level at once,
// reports a changed listen address as needing a restart, refuses an
// invalid file whole with a one-line reason, and /api/status names the
// file and hash in force; POST /api/reload does what SIGHUP does.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lb.yaml")
	aKey, _, _ := crypto.GenerateEd25519Key(nil)
	aID, _ := peer.IDFromPrivateKey(aKey)
	write := func(body string) string {
		t.Helper()
		data := []byte("identity: lb.key\nadmin: 127.0.0.1:0\n" + body)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		return hex.EncodeToString(sum[:])
	}
	level := new(slog.LevelVar)
	write("listen: [/ip4/127.0.0.1/tcp/0]\n")
	d := startFromFile(t, path, level)
	client := &admin.Client{Addr: d.AdminURL()}

	ah, err := node.New(node.Config{Key: aKey, Listen: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")}, LinkPeers: []peer.ID{d.ID()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ah.Close() })
	if err := ah.Connect(context.Background(), peer.AddrInfo{ID: d.ID(), Addrs: d.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	if st := register(t, ah, d.ID(), "/a/1"); st != pb.Status_PERMISSION_DENIED {
		t.Fatalf("before it is allowed: %v", st)
	}

	sum2 := write("listen: [/ip4/127.0.0.1/tcp/1]\nlog_level: debug\nallow: [\"" + aID.String() + "=/a/*\"]\n" +
		"connection_manager: {low_water: 50, high_water: 60}\n")
	res, err := d.Reload()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Changed, []string{"allow", "log_level"}) || !slices.Equal(res.NeedsRestart, []string{"connection_manager", "listen"}) {
		t.Fatalf("changed %v, needs a restart %v", res.Changed, res.NeedsRestart)
	}
	if level.Level() != slog.LevelDebug {
		t.Fatalf("log level %v after the reload", level.Level())
	}
	if st := register(t, ah, d.ID(), "/a/1"); st != pb.Status_OK {
		t.Fatalf("once allowed: %v", st)
	}
	if got := d.Config().Listen; !slices.Equal(got, []string{"/ip4/127.0.0.1/tcp/0"}) {
		t.Fatalf("listen in force %v; a reload cannot change it", got)
	}
	st, err := client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if c := st.Config; c == nil || c.File != path || c.SHA256 != sum2 || !slices.Equal(c.NeedsRestart, []string{"connection_manager", "listen"}) || time.Since(c.LoadedAt) > time.Minute {
		t.Fatalf("status config %+v, want %s %s", st.Config, path, sum2)
	}

	// Invalid files change nothing, and say why in one line.
	for bad, culprit := range map[string]string{
		"ttl_default: 10ms\n":                                            "ttl-default",
		"allow: [\"" + aID.String() + "=\"]\n":                           "no protocol after '='",
		"pools: [{protocol: /x, strategy: fastest}]\n":                   "fastest",
		"listen: [/ip4/127.0.0.1/tcp/1]\nallow: []\nlimits: {nope: 1}\n": "nope",
	} {
		write(bad)
		res, err := client.Reload(context.Background())
		if !errors.Is(err, admin.ErrReloadRefused) || !strings.Contains(err.Error(), culprit) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("reload of %q: %v, want one line naming %q", bad, err, culprit)
		}
		if res.Config.SHA256 != sum2 {
			t.Fatalf("a refused reload changed the configuration in force: %+v", res.Config)
		}
	}
	if st := register(t, ah, d.ID(), "/a/2"); st != pb.Status_OK {
		t.Fatalf("after refused reloads: %v", st)
	}

	// Over the admin API: withdraw a.
	sum3 := write("listen: [/ip4/127.0.0.1/tcp/0]\n")
	res, err = client.Reload(context.Background())
	if err != nil || !res.OK || res.Config.SHA256 != sum3 || len(res.NeedsRestart) != 0 {
		t.Fatalf("reload over the API: %+v, %v", res, err)
	}
	if st := register(t, ah, d.ID(), "/a/1"); st != pb.Status_PERMISSION_DENIED {
		t.Fatalf("once withdrawn: %v", st)
	}
	if rs := d.Balancer().Routes(); len(rs) != 0 {
		t.Fatalf("routes left after the withdrawal: %v", rs)
	}
}

// TestReloadDialPolicy: turning outbound.dial_loopback on by a reload
// reaches the host's dial gater, which judges the addresses the balancer
// learned from identify.
func TestReloadDialPolicy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lb.yaml")
	aKey, _, _ := crypto.GenerateEd25519Key(nil)
	aID, _ := peer.IDFromPrivateKey(aKey)
	write := func(body string) {
		t.Helper()
		data := "identity: lb.key\nadmin: off\nlisten: [/ip4/127.0.0.1/tcp/0]\nallow: [\"" + aID.String() + "\"]\n" + body
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	d := startFromFile(t, path, nil)
	a, e := backendAndGoneTarget(t, d, aKey)
	outbound := func() *pb.ForwardResponse {
		t.Helper()
		s, err := a.NewStream(context.Background(), d.ID(), wire.ForwardID)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Reset()
		_ = s.SetDeadline(time.Now().Add(20 * time.Second))
		_ = wire.WriteMsg(s, &pb.Forward{Peer: []byte(e.ID()), Protocols: []string{"/e"}})
		var resp pb.ForwardResponse
		if err := wire.NewReader(s).ReadMsg(&resp); err != nil {
			t.Fatal(err)
		}
		return &resp
	}
	if resp := outbound(); resp.Status != pb.Status_DIAL_FAILED {
		t.Fatalf("before the reload: %v %q, want DIAL_FAILED", resp.Status, resp.Text)
	}
	write("outbound: {dial_loopback: true}\n")
	if res, err := d.Reload(); err != nil || !slices.Equal(res.Changed, []string{"outbound"}) {
		t.Fatalf("reload: %+v, %v", res, err)
	}
	if resp := outbound(); resp.Status != pb.Status_OK {
		t.Fatalf("after dial_loopback was turned on: %v %q, want OK", resp.Status, resp.Text)
	}
}

// startFromFile starts a daemon from the configuration file at path, which
// each reload reads again; level, when not nil, is the level a reload sets.
func startFromFile(t *testing.T, path string, level *slog.LevelVar) *daemon.Daemon {
	t.Helper()
	src := daemon.Source{File: path, Level: level, Load: func() (daemon.Config, string, error) {
		cfg := daemon.DefaultConfig()
		sum, err := daemon.LoadFileSum(path, &cfg)
		return cfg, sum, err
	}}
	cfg, sum, err := src.Load()
	if err != nil {
		t.Fatal(err)
	}
	d, err := daemon.Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	d.SetSource(src, sum)
	return d
}

package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/libp2p-balancer/libp2p-balancer/internal/daemon"
)

func newPeerID(t *testing.T) peer.ID {
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	return id
}

// TestExampleConfig: the shipped example parses and documents the defaults.
func TestExampleConfig(t *testing.T) {
	path := filepath.Join("..", "..", "balancer.example.yaml")
	cfg := daemon.Config{}
	if err := daemon.LoadFile(path, &cfg); err != nil {
		t.Fatal(err)
	}
	want := daemon.DefaultConfig()
	want.Identity = filepath.Join("..", "..", daemon.DefaultIdentity)
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("example config\n%+v\nwant the defaults\n%+v", cfg, want)
	}
}

func TestLoadFile(t *testing.T) {
	a, b, c := newPeerID(t), newPeerID(t), newPeerID(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "lb.yaml")
	os.WriteFile(path, []byte(`
identity: keys/lb.key
listen: [/ip4/127.0.0.1/tcp/0]
allow:
  - peer: `+a.String()+`
    protocols: [/chat/1.0.0, /files/*]
  - peer: `+b.String()+`
  - "`+c.String()+`=/echo/1.0.0"
ttl_default: 30s
drain_timeout: 2m
`), 0o600)
	cfg := daemon.DefaultConfig()
	if err := daemon.LoadFile(path, &cfg); err != nil {
		t.Fatal(err)
	}
	want := daemon.DefaultConfig()
	want.Identity = filepath.Join(dir, "keys", "lb.key")
	want.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	want.Allow = []daemon.Allow{
		{Peer: a.String(), Protocols: []string{"/chat/1.0.0", "/files/*"}},
		{Peer: b.String()},
		{Peer: c.String(), Protocols: []string{"/echo/1.0.0"}},
	}
	want.TTLDefault = 30 * time.Second
	want.DrainTimeout = 2 * time.Minute
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("loaded\n%+v\nwant\n%+v", cfg, want)
	}
	if _, err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for name, c := range map[string]struct {
		yaml string
		want string
	}{
		"unknown key":  {"listen: []\nbogus: 1\n", "bogus"},
		"bad peer":     {"allow: [nope]\n", "bad peer ID"},
		"bad mapping":  {"allow:\n  - protocols: [/x]\n", "no peer ID"},
		"bad duration": {"ttl_max: 10\n", "time.Duration"},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
		os.WriteFile(path, []byte(c.yaml), 0o600)
		cfg := daemon.DefaultConfig()
		cfg.Admin = "127.0.0.1:0" // tests run side by side
		err := daemon.LoadFile(path, &cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: err = %v, want one line naming %s and %q", name, err, path, c.want)
		}
	}
	id := newPeerID(t)
	for name, c := range map[string]struct {
		mod  func(*daemon.Config)
		want string
	}{
		"no listen":    {func(c *daemon.Config) { c.Listen = nil }, "listen"},
		"bad listen":   {func(c *daemon.Config) { c.Listen = []string{"/ip4/1.2.3.4/tcpx/1"} }, `listen "/ip4/1.2.3.4/tcpx/1"`},
		"bad protocol": {func(c *daemon.Config) { c.Allow = []daemon.Allow{{Peer: id.String(), Protocols: []string{"echo"}}} }, "does not start with /"},
		// The pattern as typed, not "whoami/" (issue 14).
		"bad prefix": {func(c *daemon.Config) { c.Allow = []daemon.Allow{{Peer: id.String(), Protocols: []string{"whoami/*"}}} }, `protocol ID "whoami/*" does not start with /`},
		"ttl":        {func(c *daemon.Config) { c.TTLDefault = 500 * time.Millisecond }, "ttl-default"},
		"ttl max":    {func(c *daemon.Config) { c.TTLMax = time.Second }, "ttl-max"},
		"log level":  {func(c *daemon.Config) { c.LogLevel = "loud" }, "log level"},
		// Checked by the balancer, named by the daemon.
		"ttl too long": {func(c *daemon.Config) { c.TTLMax = 1 << 62 }, "ttl-max"},
		"handshake":    {func(c *daemon.Config) { c.HandshakeTimeout = -time.Second }, "handshake-timeout -1s"},
		"dial":         {func(c *daemon.Config) { c.DialTimeout = -time.Second }, "dial-timeout -1s"},
		"idle":         {func(c *daemon.Config) { c.IdleTimeout = -time.Second }, "idle-timeout -1s"},
		"probe":        {func(c *daemon.Config) { c.ProbeInterval = -time.Second }, "probe-interval -1s"},
		"health":       {func(c *daemon.Config) { c.Health.MaxEjection = time.Second }, "base_ejection..max_ejection 10s..1s"},
		"strategy":     {func(c *daemon.Config) { c.Pools = []daemon.Pool{{Protocol: "/x/1", Strategy: "best"}} }, "pools[0] (/x/1)"},
		"rate below 1": {func(c *daemon.Config) { c.Limits.NewStreamsPerSecondPerPeer = 0.5 }, "limits: new_streams_per_second_per_peer 0.5"},
	} {
		cfg := daemon.DefaultConfig()
		cfg.Admin = "127.0.0.1:0" // tests run side by side
		c.mod(&cfg)
		if _, err := cfg.Check(); err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: err = %v, want one line naming %q", name, err, c.want)
		}
	}
}

func TestParseAllow(t *testing.T) {
	id := newPeerID(t)
	a, err := daemon.ParseAllow(id.String() + "=/a/1.0.0, /b/*")
	if err != nil {
		t.Fatal(err)
	}
	if a.Peer != id.String() || !reflect.DeepEqual(a.Protocols, []string{"/a/1.0.0", "/b/*"}) {
		t.Fatalf("parsed %+v", a)
	}
	if a.String() != id.String()+"=/a/1.0.0,/b/*" {
		t.Fatalf("String() = %q", a.String())
	}
	for _, bad := range []string{"", "nope", id.String() + "=", "=/a"} {
		if _, err := daemon.ParseAllow(bad); err == nil {
			t.Errorf("ParseAllow(%q) accepted", bad)
		}
	}
}

func TestStartShutdown(t *testing.T) {
	cfg := daemon.DefaultConfig()
	cfg.Admin = "127.0.0.1:0" // tests run side by side
	cfg.Identity = filepath.Join(t.TempDir(), "lb.key")
	cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
	cfg.Allow = []daemon.Allow{{Peer: newPeerID(t).String()}}
	d, err := daemon.Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	addrs := d.Addrs()
	if len(addrs) != 2 || !strings.Contains(addrs[0].String(), "/tcp/") || !strings.Contains(addrs[1].String(), "/quic-v1/") {
		t.Fatalf("addrs %v, want TCP then QUIC", addrs)
	}
	for _, a := range addrs {
		if !strings.HasSuffix(a.String(), "/p2p/"+d.ID().String()) {
			t.Fatalf("address %s does not end in /p2p/%s", a, d.ID())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err == nil {
		t.Fatal("Close after Shutdown returned nil, want net.ErrClosed")
	}
}

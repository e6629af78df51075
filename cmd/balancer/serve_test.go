package main

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/daemon"
)

// parseServe parses args as serve's flags, as the command does.
func parseServe(t *testing.T, args ...string) *flag.FlagSet {
	t.Helper()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fc := daemon.DefaultConfig()
	serveFlags(fs, &fc)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

// TestServeDefaults holds serve's three sources of defaults equal: its
// flags, balancer.example.yaml, and the balancer library's Default values.
func TestServeDefaults(t *testing.T) {
	fromFlags, err := serveConfig("", parseServe(t))
	if err != nil {
		t.Fatal(err)
	}
	example := filepath.Join("..", "..", "balancer.example.yaml")
	fromFile, err := serveConfig(example, parseServe(t))
	if err != nil {
		t.Fatal(err)
	}
	fromFile.Identity = filepath.Base(fromFile.Identity) // taken from the file's directory
	if !reflect.DeepEqual(fromFlags, fromFile) {
		t.Fatalf("flag defaults\n%+v\ndiffer from %s\n%+v", fromFlags, example, fromFile)
	}
	lib := fromFlags
	lib.TTLDefault, lib.TTLMax = balancer.DefaultTTL, balancer.DefaultMaxTTL
	lib.HandshakeTimeout, lib.DialTimeout = balancer.DefaultHandshakeTimeout, balancer.DefaultDialTimeout
	lib.ProbeInterval, lib.IdleTimeout = balancer.DefaultProbeInterval, 0
	lib.Limits, lib.Health = balancer.DefaultLimits(), balancer.DefaultHealth()
	if !reflect.DeepEqual(fromFlags, lib) {
		t.Fatalf("flag defaults\n%+v\ndiffer from the balancer library's\n%+v", fromFlags, lib)
	}
}

// TestServeFlagsOverFile: a flag given replaces the file's key, a
// repeatable flag the file's whole list; keys no flag names keep the file's
// value.
func TestServeFlagsOverFile(t *testing.T) {
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	path := filepath.Join(t.TempDir(), "lb.yaml")
	os.WriteFile(path, []byte(`
listen: [/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2]
allow: [`+id.String()+`]
ttl_default: 30s
ttl_max: 1m
admin_public: true
limits:
  streams: 7
`), 0o600)
	cfg, err := serveConfig(path, parseServe(t, "--listen", "/ip4/127.0.0.1/tcp/3", "--ttl-max", "5m", "--admin-public=false"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Listen, []string{"/ip4/127.0.0.1/tcp/3"}) || cfg.TTLMax != 5*time.Minute || cfg.AdminPublic {
		t.Fatalf("flags did not override the file: listen %v, ttl-max %v, admin-public %v", cfg.Listen, cfg.TTLMax, cfg.AdminPublic)
	}
	if len(cfg.Allow) != 1 || cfg.Allow[0].Peer != id.String() || cfg.TTLDefault != 30*time.Second || cfg.Limits.Streams != 7 {
		t.Fatalf("the file's other keys were lost: allow %v, ttl-default %v, limits %+v", cfg.Allow, cfg.TTLDefault, cfg.Limits)
	}

	cfg, err = serveConfig(path, parseServe(t, "--allow", id.String()+"=/a/1.0.0", "--allow", id.String()+"=/b/*"))
	if err != nil {
		t.Fatal(err)
	}
	want := []daemon.Allow{{Peer: id.String(), Protocols: []string{"/a/1.0.0"}}, {Peer: id.String(), Protocols: []string{"/b/*"}}}
	if !reflect.DeepEqual(cfg.Allow, want) {
		t.Fatalf("allow %+v, want the two flags' %+v", cfg.Allow, want)
	}

	_, err = serveConfig(path, parseServe(t, "--allow", "QmNotAPeer"))
	if err == nil || !strings.Contains(err.Error(), `allow "QmNotAPeer"`) {
		t.Fatalf("bad --allow: err = %v, want one naming it", err)
	}
}

package daemon_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"

	"github.com/libp2p-balancer/libp2p-balancer/internal/daemon"
)

// TestHostLimitsConfig: the resource_manager and connection_manager
// sections reach the host's resource manager, the capacity they give is
// logged at start, and a bad value stops Start with one line naming it.
func TestHostLimitsConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lb.yaml")
	os.WriteFile(path, []byte(`
identity: lb.key
listen: [/ip4/127.0.0.1/tcp/0]
admin: "off"
resource_manager:
  system: {conns_inbound: 3000, conns: 4000}
  peer_default: {streams_inbound: 7, streams: 7}
connection_manager: {low_water: 50, high_water: 60}
backend_networks: [10.1.0.0/16]
`), 0o600)
	cfg := daemon.DefaultConfig()
	if err := daemon.LoadFile(path, &cfg); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	d, err := daemon.Start(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var conns int
	d.Host().Network().ResourceManager().ViewSystem(func(s network.ResourceScope) error {
		conns = s.(rcmgr.ResourceScopeLimiter).Limit().GetConnLimit(network.DirInbound)
		return nil
	})
	if conns != 3000 {
		t.Errorf("system inbound connection limit %d, want 3000 from the file", conns)
	}
	if !strings.Contains(logs.String(), "peers=3000 streams_per_peer=7") {
		t.Errorf("start log does not give the capacity of the configured limits:\n%s", logs.String())
	}

	cfg.Host.ConnManager.LowWater = 100
	if _, err := daemon.Start(cfg, nil); err == nil || !strings.Contains(err.Error(), "low_water 100 is above high_water 60") {
		t.Errorf("low water above high water: %v", err)
	}
}

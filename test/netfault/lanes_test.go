//go:build linux

package netfault_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// TestLanesFromOneIP: a backend over QUIC opens one lane per 256 streams,
// all from its host's one IP address. go-libp2p holds an IP address to 8
// connections (loopback is exempt, hence a namespace): with the backend's
// network in backend_networks, a default `balancer serve` keeps all 24
// lanes; without it, it keeps 8 and counts the others as refusals by the
// per-IP connection limit (ip_conns) and, past a burst of 16, by the per-IP
// rate limit (ip_rate).
func TestLanesFromOneIP(t *testing.T) {
	t.Parallel()
	for _, exempt := range []bool{true, false} {
		t.Run(fmt.Sprintf("backend_networks=%v", exempt), func(t *testing.T) {
			t.Parallel()
			testLanesFromOneIP(t, exempt)
		})
	}
}

func testLanesFromOneIP(t *testing.T, exempt bool) {
	const lanes = 24
	n := newNet(t)
	dir := t.TempDir()
	lbKey, _ := proctest.KeyFile(t, dir, "lb.key")
	aKey, aID := proctest.KeyFile(t, dir, "a.key")
	cfg := filepath.Join(dir, "lb.yaml")
	doc := "log_level: debug\n"
	if exempt {
		doc += "backend_networks: [10.77.3.0/24]\n"
	}
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	lb := n.serve(t, testnet.QUIC, lbKey, "--allow", aID.String(), "--config", cfg)
	p := startIn(t, n.nsA, remoteBin, "lanes", false, "--lanes", strconv.Itoa(lanes), "--key", aKey, "--to", lb.addr)
	p.Next(t, 60*time.Second, "lanes")

	conns := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		bs, err := lb.admin.Backends(ctx)
		if err != nil {
			t.Fatalf("admin API of the balancer: %v", err)
		}
		for _, b := range bs {
			if b.ID == aID.String() {
				return len(b.Addrs)
			}
		}
		return 0
	}
	if exempt {
		testnet.Eventually(t, 20*time.Second, func() bool { return conns() == lanes },
			"%d lanes from one IP in backend_networks kept by the balancer (have %d)", lanes, conns())
		if got := ipRefusals(t, lb); got != 0 {
			t.Errorf("%v per-IP refusals of a backend network's connections", got)
		}
		return
	}
	testnet.Eventually(t, 20*time.Second, func() bool { return ipRefusals(t, lb) >= lanes-8 },
		"per-IP refusals counted (have %v)", ipRefusals(t, lb))
	if got := conns(); got > 8 {
		t.Errorf("the balancer keeps %d connections from one IP outside backend_networks, want at most 8", got)
	}
}

var ipRefusalsLine = regexp.MustCompile(`(?m)^libp2p_balancer_resource_refusals_total\{limit="ip_(?:conns|rate)",resource="conn"\} (\d+)`)

// ipRefusals reads the balancer's count of connections refused by the
// per-IP limits (count and rate) from its /metrics.
func ipRefusals(t *testing.T, lb *balancerProc) int {
	t.Helper()
	resp, err := lb.admin.HTTP.Get("http://" + lb.admin.Addr + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	sum := 0
	for _, m := range ipRefusalsLine.FindAllSubmatch(body, -1) {
		v, _ := strconv.Atoi(string(m[1]))
		sum += v
	}
	return sum
}

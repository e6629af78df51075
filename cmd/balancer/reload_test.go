package main_test

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// TestServeReloadOnSIGHUP (issue 14, point 2) on real processes: a sidecar
// refused by serve registers once the file allows it and serve gets
// SIGHUP; an invalid file is refused in one log line and changes nothing;
// a stream in flight across five reloads keeps every byte.
func TestServeReloadOnSIGHUP(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	aKey, aID := proctest.KeyFile(t, dir, "a.key")
	bKey, bID := proctest.KeyFile(t, dir, "b.key")
	path := filepath.Join(dir, "lb.yaml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte("identity: lb.key\n"+body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	onlyB := "allow: [\"" + bID.String() + "=/keep/*\"]\n"
	write(onlyB)
	lb, lbAddr := serve(t, "lb", "--config", path)
	reloads := func() int { return lb.CountErr("configuration reloaded") }
	hup := func(want int) {
		t.Helper()
		lb.Signal(t, syscall.SIGHUP)
		testnet.Eventually(t, 20*time.Second, func() bool { return reloads() == want }, "reload %d logged", want)
	}

	svc := testnet.StartTCPEcho(t, false)
	start(t, "sidecar-b", proctest.Options{}, "backend", "--identity", bKey, "--balancer", lbAddr, "--route", "/keep/1.0.0="+svc.Addr)
	waitRoute(t, lbAddr, "/keep/1.0.0", "probe", "probe")
	long := start(t, "dial-long", proctest.Options{Pipe: true}, "dial", lbAddr, "/keep/1.0.0")
	var sent strings.Builder
	send := func(line string) {
		t.Helper()
		sent.WriteString(line)
		io.WriteString(long.Stdin, line)
		long.WaitOutput(t, sent.String(), 20*time.Second)
	}
	send("before any reload\n")

	// a is refused until the file allows it.
	start(t, "sidecar-a", proctest.Options{}, "backend", "--identity", aKey, "--balancer", lbAddr, "--route", "/reload/1.0.0="+svc.Addr)
	testnet.Eventually(t, 20*time.Second, func() bool {
		return hasLine(lb.Stderr.String(), "registration refused", "peer="+aID.String())
	}, "a's registration refused")
	write(onlyB + "allow_more: yes\n")
	lb.Signal(t, syscall.SIGHUP)
	testnet.Eventually(t, 20*time.Second, func() bool { return strings.Contains(lb.Stderr.String(), "reload refused") }, "the invalid file refused")
	for _, l := range strings.Split(lb.Stderr.String(), "\n") {
		if strings.Contains(l, "reload refused") && !strings.Contains(l, "allow_more") {
			t.Fatalf("the refusal does not name the culprit: %s", l)
		}
	}
	write("allow: [\"" + bID.String() + "=/keep/*\", \"" + aID.String() + "=/reload/*\"]\n")
	hup(1)
	waitRoute(t, lbAddr, "/reload/1.0.0", "allowed now", "allowed now")
	send("after the first reload\n")

	// Four more, each changing something live.
	for i := 2; i <= 5; i++ {
		write(fmt.Sprintf("probe_interval: %ds\nlog_level: %s\nallow: [\"%s=/keep/*\", \"%s=/reload/*\"]\n",
			i, map[bool]string{true: "debug", false: "info"}[i%2 == 0], bID, aID))
		hup(i)
		send(fmt.Sprintf("after reload %d\n", i))
	}
	if res := dialOnce(t, "still routed", "--timeout", "5s", lbAddr, "/reload/1.0.0"); res.Code != 0 || res.Stdout != "still routed" {
		t.Fatalf("a new stream after five reloads: exit %d, %q, %q", res.Code, res.Stdout, res.Stderr)
	}
	long.Stdin.Close()
	if code := long.Wait(t, 20*time.Second); code != 0 || long.Stdout.String() != sent.String() {
		t.Fatalf("the stream across five reloads: exit %d, got %q, want %q", code, long.Stdout.String(), sent.String())
	}
	if strings.Contains(lb.Stderr.String(), "needs a restart") || strings.Contains(lb.Stderr.String(), "need a restart") {
		t.Fatalf("a live change reported as needing a restart:\n%s", lb.Stderr.String())
	}
}

// hasLine reports whether one line of log holds every string of want.
func hasLine(log string, want ...string) bool {
	for _, l := range strings.Split(log, "\n") {
		all := true
		for _, w := range want {
			all = all && strings.Contains(l, w)
		}
		if all {
			return true
		}
	}
	return false
}

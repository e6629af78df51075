package balancer_test

import (
	"errors"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
)

// TestOptionErrors: each refused value is an *OptionError naming the
// setting at fault, which balancer serve maps to its own flag names.
func TestOptionErrors(t *testing.T) {
	for _, c := range []struct {
		opt     balancer.Option
		setting string
	}{
		{balancer.WithTTL(500*time.Millisecond, time.Minute), "TTL default"},
		{balancer.WithTTL(2*time.Minute, time.Minute), "TTL maximum"},
		{balancer.WithTTL(time.Minute, 1<<62), "TTL maximum"},
		{balancer.WithHandshakeTimeout(0), "handshake timeout"},
		{balancer.WithDialTimeout(-time.Second), "dial timeout"},
		{balancer.WithIdleTimeout(-time.Second), "idle timeout"},
		{balancer.WithProbeInterval(-time.Second), "probe interval"},
		{balancer.WithHealth(balancer.Health{ConsecutiveFailures: 1, BaseEjection: time.Minute, MaxEjection: time.Second}), "health ejection times"},
	} {
		var oe *balancer.OptionError
		if err := balancer.CheckOptions(c.opt); !errors.As(err, &oe) || oe.Setting != c.setting {
			t.Errorf("err = %v, want an *OptionError for %q", err, c.setting)
		}
	}
	if err := balancer.CheckOptions(balancer.WithTTL(balancer.DefaultTTL, balancer.DefaultMaxTTL), balancer.WithIdleTimeout(0),
		balancer.WithProbeInterval(0), balancer.WithHealth(balancer.Health{})); err != nil {
		t.Fatalf("defaults and offs refused: %v", err)
	}
}

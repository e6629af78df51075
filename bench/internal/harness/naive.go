package harness

import (
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/naive"
)

// The naive-forwarder setups (issue 13): the same balancer, hosts, limits
// and protocol as lb-in and lb-out, with every stream copied by io.Copy
// both ways (32 KiB buffers, held for the stream's life) instead of
// package pipe. They are the baseline for the balancer's CPU per byte and
// idle memory: the copy loop is the only difference.
const (
	NaiveIn  = "naive-in"  // D → LB → A, LB copying with io.Copy
	NaiveOut = "naive-out" // B → LB → E, LB copying with io.Copy
)

// naiveOption is the benchmarking switch of package balancer, which only
// this module can reach (internal/naive).
func naiveOption() balancer.Option { return naive.BalancerOption.(balancer.Option) }

func isNaive(setup string) bool { return setup == NaiveIn || setup == NaiveOut }

// outbound reports whether the setup's streams are opened by the backend
// (B → LB → E) rather than by remote peers.
func outbound(setup string) bool { return setup == LBOut || setup == NaiveOut || setup == ServeOut }

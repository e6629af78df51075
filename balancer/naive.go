package balancer

import (
	"github.com/libp2p/go-libp2p/core/network"

	"github.com/libp2p-balancer/libp2p-balancer/internal/naive"
	"github.com/libp2p-balancer/libp2p-balancer/pipe"
)

// The bench harness's naive-forwarder setups (issue 13) run this balancer
// with io.Copy both ways instead of package pipe, so that the comparison
// differs in the copy loop alone. The option is reachable only from inside
// this module, through internal/naive: it is no feature of the balancer.
func init() {
	naive.BalancerOption = Option(func(c *config) error {
		c.naiveCopy = true
		return nil
	})
}

// startNaive is carry's pipe.Group.Start for the naive copy: the pair is
// tracked by b.active the same way, so Close and Shutdown treat both modes
// alike.
func (b *Balancer) startNaive(remote, backendSide network.Stream, progress func(pipe.Direction, int), done func(pipe.Result)) {
	if !b.active.Add(remote, backendSide) {
		_ = remote.Reset()
		_ = backendSide.Reset()
		done(pipe.Result{Err: pipe.ErrClosed})
		return
	}
	go func() {
		defer b.active.Remove(remote)
		done(naive.Join(remote, backendSide, progress))
	}()
}

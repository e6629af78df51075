package daemon

import (
	"github.com/libp2p/go-libp2p"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
)

// Outbound is what backends' outbound streams may make the balancer do
// (issue 11, items 1 and 2): the dial policy (dial_loopback, dial_private,
// dials_per_second_per_backend; balancer.DialPolicy documents each and its
// default) and whether a backend may reach another backend.
type Outbound struct {
	balancer.DialPolicy `yaml:",inline"`
	// BackendToBackend lets a backend open outbound streams to another
	// allowed backend (never on the balancer's own protocols).
	BackendToBackend bool `yaml:"backend_to_backend"`
}

// DefaultOutbound is Config.Outbound unless told otherwise: the balancer's
// default dial policy, no backend-to-backend streams.
func DefaultOutbound() Outbound {
	return Outbound{DialPolicy: balancer.DefaultDialPolicy()}
}

// balancerOptions gives the balancer the policy and the backend-to-backend
// choice.
func (o Outbound) balancerOptions() []balancer.Option {
	return []balancer.Option{balancer.WithDialPolicy(o.DialPolicy), balancer.WithBackendToBackend(o.BackendToBackend)}
}

// hostOptions gives the host the gater that applies the policy to every
// address it dials, those learned from identify and DNS included, and the
// gater, whose policy Reload replaces.
func (o Outbound) hostOptions() ([]libp2p.Option, *gater) {
	g := newGater(o.DialPolicy)
	return []libp2p.Option{libp2p.ConnectionGater(g)}, g
}

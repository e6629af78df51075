package balancer

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// candidates returns the connected backends serving proto in the order to
// offer them a stream from remote: the pool's policy orders the healthy
// ones, ejected ones follow (offered only when every healthy one failed),
// and backends at their StreamsPerBackend cap are left out.
func (b *Balancer) candidates(proto protocol.ID, remote peer.ID) []member {
	b.mu.Lock()
	defer b.mu.Unlock()
	pl := b.pools[proto]
	if pl == nil {
		return nil
	}
	now := time.Now()
	limit := int64(b.settings().limits.StreamsPerBackend)
	healthy := make([]member, 0, len(pl.routes))
	var ejected []member
	for _, r := range pl.routes {
		be := r.backend
		if !be.connected {
			continue
		}
		m := member{r: r, active: be.active.Load()}
		if limit > 0 && m.active >= limit {
			continue
		}
		if be.health.ejected(now) {
			ejected = append(ejected, m)
		} else {
			healthy = append(healthy, m)
		}
	}
	policy := b.settings().policyFor(proto)
	pl.order(policy, healthy, remote)
	pl.order(policy, ejected, remote)
	return append(healthy, ejected...)
}

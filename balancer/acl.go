package balancer

import (
	"fmt"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
)

// acl says which peers are backends and which protocols each may use.
type acl map[peer.ID]*grant

// grant is one backend's permission: any protocol, or those matching exact
// IDs and prefixes.
type grant struct {
	any      bool
	exact    map[string]bool
	prefixes []string
}

func (a acl) allow(p peer.ID, patterns []string) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("balancer: allow: bad peer ID: %w", err)
	}
	g := a[p]
	if g == nil {
		g = &grant{exact: map[string]bool{}}
		a[p] = g
	}
	if len(patterns) == 0 {
		g.any = true
	}
	for _, pat := range patterns {
		switch {
		case pat == "" || pat == "*":
			g.any = true
		case strings.HasSuffix(pat, "*"):
			g.prefixes = append(g.prefixes, strings.TrimSuffix(pat, "*"))
		default:
			g.exact[pat] = true
		}
	}
	return nil
}

// permits reports whether p may use proto; a peer not in the acl may use
// nothing.
func (a acl) permits(p peer.ID, proto string) bool {
	g := a[p]
	if g == nil {
		return false
	}
	if g.any || g.exact[proto] {
		return true
	}
	for _, pre := range g.prefixes {
		if strings.HasPrefix(proto, pre) {
			return true
		}
	}
	return false
}

func (a acl) isBackend(p peer.ID) bool { return a[p] != nil }

// namesExactly reports whether some backend is granted proto by its exact
// name: such protocols come from the configuration, a bounded set.
func (a acl) namesExactly(proto string) bool {
	for _, g := range a {
		if g.exact[proto] {
			return true
		}
	}
	return false
}

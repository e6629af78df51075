package admin

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"

	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// BusiestPeers is how many peers, the most streams first, Status shows the
// resource use of.
const BusiestPeers = 5

// Scope is the current use and the limits in force of one resource manager
// scope, so that an operator sees which limit a refusal hit. A limit of -1
// is no limit.
type Scope struct {
	// Name is "system", "transient", "service libp2p.balancer" or
	// "peer <peer ID>".
	Name            string `json:"name"`
	StreamsIn       int    `json:"streams_in"`
	StreamsInLimit  int    `json:"streams_in_limit"`
	StreamsOut      int    `json:"streams_out"`
	StreamsOutLimit int    `json:"streams_out_limit"`
	ConnsIn         int    `json:"conns_in"`
	ConnsInLimit    int    `json:"conns_in_limit"`
	ConnsOut        int    `json:"conns_out"`
	ConnsOutLimit   int    `json:"conns_out_limit"`
	FD              int    `json:"fd"`
	FDLimit         int    `json:"fd_limit"`
	Memory          int64  `json:"memory"`
	MemoryLimit     int64  `json:"memory_limit"`
}

// scopesOf reads the main scopes of h's resource manager: the system, the
// transient scope, the balancer protocol's service and the BusiestPeers
// peers with the most streams. It returns nil when the resource manager
// shows no limits (not go-libp2p's rcmgr).
func scopesOf(h host.Host) []Scope {
	rm := h.Network().ResourceManager()
	var out []Scope
	add := func(name string) func(network.ResourceScope) error {
		return func(s network.ResourceScope) error {
			if sc, ok := scopeOf(name, s); ok {
				out = append(out, sc)
			}
			return nil
		}
	}
	_ = rm.ViewSystem(add("system"))
	if len(out) == 0 {
		return nil
	}
	_ = rm.ViewTransient(add("transient"))
	_ = rm.ViewService(wire.ServiceName, func(s network.ServiceScope) error { return add("service " + wire.ServiceName)(s) })
	var peers []Scope
	for _, p := range h.Network().Peers() {
		_ = rm.ViewPeer(p, func(s network.PeerScope) error {
			if sc, ok := scopeOf("peer "+p.String(), s); ok {
				peers = append(peers, sc)
			}
			return nil
		})
	}
	sort.Slice(peers, func(i, j int) bool {
		a, b := peers[i].StreamsIn+peers[i].StreamsOut, peers[j].StreamsIn+peers[j].StreamsOut
		if a != b {
			return a > b
		}
		return peers[i].Name < peers[j].Name
	})
	return append(out, peers[:min(len(peers), BusiestPeers)]...)
}

// scopeOf reads one scope's use and, when it shows them, its limits.
func scopeOf(name string, s network.ResourceScope) (Scope, bool) {
	lim, ok := s.(rcmgr.ResourceScopeLimiter)
	if !ok {
		return Scope{}, false
	}
	l, st := lim.Limit(), s.Stat()
	capped := func(n int) int {
		if n >= math.MaxInt32 {
			return -1
		}
		return n
	}
	mem := l.GetMemoryLimit()
	if mem >= math.MaxInt64/2 {
		mem = -1
	}
	return Scope{
		Name:            name,
		StreamsIn:       st.NumStreamsInbound,
		StreamsInLimit:  capped(min(l.GetStreamLimit(network.DirInbound), l.GetStreamTotalLimit())),
		StreamsOut:      st.NumStreamsOutbound,
		StreamsOutLimit: capped(min(l.GetStreamLimit(network.DirOutbound), l.GetStreamTotalLimit())),
		ConnsIn:         st.NumConnsInbound,
		ConnsInLimit:    capped(min(l.GetConnLimit(network.DirInbound), l.GetConnTotalLimit())),
		ConnsOut:        st.NumConnsOutbound,
		ConnsOutLimit:   capped(min(l.GetConnLimit(network.DirOutbound), l.GetConnTotalLimit())),
		FD:              st.NumFD,
		FDLimit:         capped(l.GetFDLimit()),
		Memory:          st.Memory,
		MemoryLimit:     mem,
	}, true
}

// printScopes prints the resource manager's main scopes as "use/limit".
func printScopes(w io.Writer, scopes []Scope) error {
	if len(scopes) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LIMITS\tSTREAMS IN\tSTREAMS OUT\tCONNS IN\tCONNS OUT\tFD\tMEMORY")
	for _, s := range scopes {
		name := s.Name
		if id, ok := strings.CutPrefix(name, "peer "); ok && len(id) > 18 {
			name = "peer " + id[:8] + "…" + id[len(id)-6:] // as the status page shortens it
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s/%s\n", name,
			useOf(s.StreamsIn, s.StreamsInLimit), useOf(s.StreamsOut, s.StreamsOutLimit),
			useOf(s.ConnsIn, s.ConnsInLimit), useOf(s.ConnsOut, s.ConnsOutLimit), useOf(s.FD, s.FDLimit),
			bytesString(s.Memory), memLimit(s.MemoryLimit))
	}
	return tw.Flush()
}

func useOf(n, limit int) string {
	if limit < 0 {
		return fmt.Sprintf("%d/-", n)
	}
	return fmt.Sprintf("%d/%d", n, limit)
}

func memLimit(n int64) string {
	if n < 0 {
		return "-"
	}
	return bytesString(n)
}

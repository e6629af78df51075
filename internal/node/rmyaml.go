package node

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"go.yaml.in/yaml/v3"
)

// UnmarshalYAML reads the resource_manager section: go-libp2p's
// rcmgr.PartialLimitConfig with its keys in snake_case, such as
//
//	resource_manager:
//	  system: {conns_inbound: 4096, memory: 8GiB}
//	  peer_default: {streams_inbound: 1024}
//	  protocol: {/my/proto/1.0.0: {streams_inbound: unlimited}}
//	  peer: {12D3KooW...: {streams: 4096}}
//
// Scopes: system, transient, allowlisted_system, allowlisted_transient,
// service_default, service_peer_default, protocol_default,
// protocol_peer_default, peer_default, conn, stream, and the maps service,
// service_peer, protocol, protocol_peer (keyed by name or protocol ID) and
// peer (keyed by peer ID). Limits: streams, streams_inbound,
// streams_outbound, conns, conns_inbound, conns_outbound, fd, memory. A
// value is a positive number, "unlimited", "default" (keep the default) or
// 0 (block all), as in go-libp2p's JSON; memory also takes KiB, MiB, GiB.
// Errors name the line and the key at fault.
func (r *ResourceManager) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: resource_manager: want a mapping of scopes", n.Line)
	}
	var out rcmgr.PartialLimitConfig
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name := "resource_manager." + k.Value
		if dst := scopeField(&out, k.Value); dst != nil {
			if err := readLimits(v, name, dst); err != nil {
				return err
			}
			continue
		}
		if err := readScopeMap(&out, k.Value, v, name); err != nil {
			return err
		}
	}
	r.PartialLimitConfig = out
	return nil
}

// scopeField returns the scope that key names, or nil for the keyed scopes
// and unknown keys.
func scopeField(c *rcmgr.PartialLimitConfig, key string) *rcmgr.ResourceLimits {
	switch key {
	case "system":
		return &c.System
	case "transient":
		return &c.Transient
	case "allowlisted_system":
		return &c.AllowlistedSystem
	case "allowlisted_transient":
		return &c.AllowlistedTransient
	case "service_default":
		return &c.ServiceDefault
	case "service_peer_default":
		return &c.ServicePeerDefault
	case "protocol_default":
		return &c.ProtocolDefault
	case "protocol_peer_default":
		return &c.ProtocolPeerDefault
	case "peer_default":
		return &c.PeerDefault
	case "conn":
		return &c.Conn
	case "stream":
		return &c.Stream
	}
	return nil
}

// readScopeMap reads one of the keyed scopes (service, protocol, peer ...).
func readScopeMap(out *rcmgr.PartialLimitConfig, key string, v *yaml.Node, name string) error {
	switch key {
	case "service", "service_peer", "protocol", "protocol_peer", "peer":
	default:
		return fmt.Errorf("line %d: %s: unknown scope (want system, transient, peer_default, protocol_default, service, protocol, peer, ...)", v.Line, name)
	}
	if v.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: %s: want a mapping from names to limits", v.Line, name)
	}
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, lv := v.Content[i], v.Content[i+1]
		var l rcmgr.ResourceLimits
		if err := readLimits(lv, name+"."+k.Value, &l); err != nil {
			return err
		}
		switch key {
		case "service":
			setKey(&out.Service, k.Value, l)
		case "service_peer":
			setKey(&out.ServicePeer, k.Value, l)
		case "protocol":
			setKey(&out.Protocol, protocol.ID(k.Value), l)
		case "protocol_peer":
			setKey(&out.ProtocolPeer, protocol.ID(k.Value), l)
		case "peer":
			id, err := peer.Decode(k.Value)
			if err != nil {
				return fmt.Errorf("line %d: %s: %q is not a peer ID", k.Line, name, k.Value)
			}
			setKey(&out.Peer, id, l)
		}
	}
	return nil
}

func setKey[K comparable](m *map[K]rcmgr.ResourceLimits, k K, l rcmgr.ResourceLimits) {
	if *m == nil {
		*m = map[K]rcmgr.ResourceLimits{}
	}
	(*m)[k] = l
}

// readLimits reads one scope's limits into dst.
func readLimits(n *yaml.Node, name string, dst *rcmgr.ResourceLimits) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: %s: want a mapping of limits (streams_inbound: 1024, ...)", n.Line, name)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := name + "." + k.Value
		if k.Value == "memory" {
			m, err := memoryVal(v.Value)
			if err != nil || v.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: %s %q: want a number of bytes (or with KiB, MiB, GiB), \"unlimited\", \"default\" or 0", v.Line, key, v.Value)
			}
			dst.Memory = m
			continue
		}
		f := limitField(dst, k.Value)
		if f == nil {
			return fmt.Errorf("line %d: %s: unknown limit (want streams, streams_inbound, streams_outbound, conns, conns_inbound, conns_outbound, fd, memory)", k.Line, key)
		}
		lv, err := limitVal(v.Value)
		if err != nil || v.Kind != yaml.ScalarNode {
			return fmt.Errorf("line %d: %s %q: want a positive number, \"unlimited\", \"default\" or 0 (block all)", v.Line, key, v.Value)
		}
		*f = lv
	}
	return nil
}

func limitField(l *rcmgr.ResourceLimits, key string) *rcmgr.LimitVal {
	switch key {
	case "streams":
		return &l.Streams
	case "streams_inbound":
		return &l.StreamsInbound
	case "streams_outbound":
		return &l.StreamsOutbound
	case "conns":
		return &l.Conns
	case "conns_inbound":
		return &l.ConnsInbound
	case "conns_outbound":
		return &l.ConnsOutbound
	case "fd":
		return &l.FD
	}
	return nil
}

// limitVal parses a count the way rcmgr.LimitVal's JSON form does.
func limitVal(s string) (rcmgr.LimitVal, error) {
	switch s {
	case "default":
		return rcmgr.DefaultLimit, nil
	case "unlimited":
		return rcmgr.Unlimited, nil
	case "0", "blockAll", "block_all":
		return rcmgr.BlockAllLimit, nil
	}
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil || n < 0 || n == math.MaxInt32 {
		return 0, fmt.Errorf("bad limit %q", s)
	}
	return rcmgr.LimitVal(n), nil
}

// memoryVal parses a byte count, with an optional KiB, MiB or GiB.
func memoryVal(s string) (rcmgr.LimitVal64, error) {
	switch s {
	case "default":
		return rcmgr.DefaultLimit64, nil
	case "unlimited":
		return rcmgr.Unlimited64, nil
	case "0", "blockAll", "block_all":
		return rcmgr.BlockAllLimit64, nil
	}
	mult := int64(1)
	for suffix, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, suffix)), m
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/mult-1 {
		return 0, fmt.Errorf("bad memory %q", s)
	}
	return rcmgr.LimitVal64(n * mult), nil
}

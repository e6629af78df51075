package sidecar

import (
	"testing"

	ma "github.com/multiformats/go-multiaddr"
)

func TestAddrPort(t *testing.T) {
	for in, want := range map[string]string{
		"/ip4/192.0.2.1/tcp/4001":             "192.0.2.1:4001",
		"/ip4/192.0.2.1/udp/4001/quic-v1":     "192.0.2.1:4001",
		"/ip6/2001:db8::1/tcp/4001":           "[2001:db8::1]:4001",
		"/ip4/192.0.2.1/tcp/4001/p2p-circuit": "invalid AddrPort",
		"/dns4/example.com/tcp/4001":          "invalid AddrPort",
		"/ip4/192.0.2.1/tcp/4001/ws":          "192.0.2.1:4001",
	} {
		if got := addrPort(ma.StringCast(in)).String(); got != want {
			t.Errorf("addrPort(%s) = %s, want %s", in, got, want)
		}
	}
}

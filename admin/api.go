package admin

import (
	"time"
)

// The JSON documents the admin API serves. Client decodes into the same
// types, so the daemon and `balancer status` cannot drift apart.

// Status is the answer of /api/status: who the balancer is and a summary.
type Status struct {
	// Time is the server's clock when the answer was made; TTLs and byte
	// rates are computed against it rather than the reader's clock.
	Time   time.Time `json:"time"`
	PeerID string    `json:"peer_id"`
	// Addrs are the addresses to reach the balancer on, each ending in
	// /p2p/<peer ID>.
	Addrs []string `json:"addrs"`
	// Ready and NotReady say what /readyz says.
	Ready    bool   `json:"ready"`
	NotReady string `json:"not_ready,omitempty"`
	// Routes counts routes (protocol and backend pairs), Protocols the
	// distinct protocols routed.
	Routes    int `json:"routes"`
	Protocols int `json:"protocols"`
	// Backends counts allowed backends and any peer that used the
	// balancer as one; BackendsConnected those connected now, and
	// BackendsEjected those ejected by passive health checking.
	Backends          int `json:"backends"`
	BackendsConnected int `json:"backends_connected"`
	BackendsEjected   int `json:"backends_ejected"`
	// ActiveStreams counts forwarded streams in flight, both directions.
	ActiveStreams int `json:"active_streams"`
	// BytesTo and BytesFrom total the bytes forwarded to and from the
	// backends since start; two readings give a rate.
	BytesTo   int64 `json:"bytes_to"`
	BytesFrom int64 `json:"bytes_from"`
	// Config says which configuration is in force; absent when the
	// Handler has no Config function (a library user's own setup).
	Config *ConfigInfo `json:"config,omitempty"`
	// Scopes are the host's resource manager limits in force and their
	// current use: the system, the transient scope (handshakes in
	// progress), the balancer protocol's service, and the busiest peers.
	Scopes []Scope `json:"scopes,omitempty"`
}

// RouteList is the answer of /api/routes.
type RouteList struct {
	Time   time.Time `json:"time"`
	Routes []Route   `json:"routes"`
}

// Route is one protocol routed to one backend.
type Route struct {
	Protocol string `json:"protocol"`
	Backend  string `json:"backend"`
	// Expires is when the route lapses unless the backend extends it;
	// TTLSeconds is the time left at the answer's Time.
	Expires    time.Time `json:"expires"`
	TTLSeconds float64   `json:"ttl_seconds"`
	// Strategy and Sticky are the policy of the protocol's pool.
	Strategy string `json:"strategy"`
	Sticky   bool   `json:"sticky"`
	Weight   uint32 `json:"weight"`
	// Connected is false while the backend is disconnected and the route
	// suspended.
	Connected bool `json:"connected"`
	// Ejected is true while passive health checking has ejected the
	// backend.
	Ejected bool `json:"ejected"`
	// ActiveStreams counts the backend's forwarded streams in flight, all
	// its protocols and both directions (the figure least-streams uses).
	ActiveStreams int64 `json:"active_streams"`
}

// BackendList is the answer of /api/backends.
type BackendList struct {
	Time     time.Time `json:"time"`
	Backends []Backend `json:"backends"`
}

// Backend is one allowed backend, or a peer that used the balancer as one.
type Backend struct {
	ID string `json:"id"`
	// Addrs are the remote addresses of its connections to the balancer.
	Addrs     []string `json:"addrs"`
	Connected bool     `json:"connected"`
	// Healthy is false while passive health checking has it ejected, until
	// EjectedUntil.
	Healthy      bool       `json:"healthy"`
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
	// Streams counts its forwarded streams in flight, both directions;
	// Outbound those it opened.
	Streams  int64 `json:"streams"`
	Outbound int64 `json:"outbound"`
	// BytesTo and BytesFrom count the bytes forwarded to and from it.
	BytesTo   int64 `json:"bytes_to"`
	BytesFrom int64 `json:"bytes_from"`
	// Protocols lists its routes.
	Protocols []string `json:"protocols"`
	// LinkFull counts the streams it could not be offered because its QUIC
	// connections were all at their 256-stream cap and it opened no lane.
	LinkFull int64 `json:"link_full"`
}

// EventList is the answer of /api/events: recent refusals and ejections,
// newest first.
type EventList struct {
	Time   time.Time `json:"time"`
	Events []Event   `json:"events"`
}

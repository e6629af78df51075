package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"go.yaml.in/yaml/v3"
)

// Config is everything `balancer serve` can be told, in a YAML file
// (balancer.example.yaml at the repository root documents every key) or by
// command-line flags, which override the file.
type Config struct {
	// Identity is the private key file (crypto.MarshalPrivateKey bytes),
	// created with a new Ed25519 key when missing. In a file, a relative
	// path is taken from the file's directory.
	Identity string `yaml:"identity"`
	// Listen lists the multiaddrs to listen on.
	Listen []string `yaml:"listen"`
	// Allow lists the backends that may register, and what.
	Allow []Allow `yaml:"allow"`
	// TTLDefault is granted to a registration that asks for none.
	TTLDefault time.Duration `yaml:"ttl_default"`
	// TTLMax is the longest TTL granted.
	TTLMax time.Duration `yaml:"ttl_max"`
	// DrainTimeout bounds the wait for streams in flight on shutdown.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// HandshakeTimeout bounds each forward handshake with a backend.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// DialTimeout bounds reaching the target of a backend's outbound
	// stream.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// IdleTimeout resets a forwarded stream idle for this long; 0 never.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// ProbeInterval is how often each connected backend with routes is
	// pinged; one that does not answer within it is disconnected, which
	// suspends its routes. 0 turns probing off.
	ProbeInterval time.Duration `yaml:"probe_interval"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json.
	LogFormat string `yaml:"log_format"`
	// Admin is the HOST:PORT of the admin HTTP listener (metrics, JSON
	// API, status page); "off" or empty turns it off.
	Admin string `yaml:"admin"`
	// AdminPublic allows a non-loopback Admin address, which then needs a
	// token.
	AdminPublic bool `yaml:"admin_public"`
	// AdminTokenFile holds the bearer token of the admin listener; the
	// BALANCER_ADMIN_TOKEN environment variable is the alternative. A
	// token is never taken from a flag value, which `ps` would show.
	AdminTokenFile string `yaml:"admin_token_file"`
	// Pools sets the policy of the pools of matching protocols; the first
	// matching entry wins; the others use least-streams.
	Pools []Pool `yaml:"pools"`
	// Limits bounds what backends and remote peers can cause; see
	// balancer.Limits. Zero fields keep the balancer's defaults only for
	// protocols_per_request and routes_per_backend; others mean no limit.
	Limits Limits `yaml:"limits"`
	// Health tunes passive health checking; see balancer.Health.
	Health Health `yaml:"health"`
}

// Pool sets the policy of the pools of protocols matching Protocol: an exact
// ID, or a prefix followed by "*".
type Pool struct {
	Protocol string `yaml:"protocol"`
	// Strategy is least-streams, round-robin, random-of-two or weighted.
	Strategy string `yaml:"strategy"`
	// Sticky sends one remote peer's streams to the same backend.
	Sticky bool `yaml:"sticky"`
}

// Limits mirrors balancer.Limits in the configuration file.
type Limits struct {
	ProtocolsPerRequest        int     `yaml:"protocols_per_request"`
	RoutesPerBackend           int     `yaml:"routes_per_backend"`
	Streams                    int     `yaml:"streams"`
	StreamsPerBackend          int     `yaml:"streams_per_backend"`
	OutboundPerBackend         int     `yaml:"outbound_per_backend"`
	StreamsPerPeer             int     `yaml:"streams_per_peer"`
	NewStreamsPerSecondPerPeer float64 `yaml:"new_streams_per_second_per_peer"`
}

// Health mirrors balancer.Health in the configuration file.
type Health struct {
	ConsecutiveFailures int           `yaml:"consecutive_failures"`
	BaseEjection        time.Duration `yaml:"base_ejection"`
	MaxEjection         time.Duration `yaml:"max_ejection"`
}

// Allow lets one backend register routes: any protocol when Protocols is
// empty, otherwise only those listed, a protocol ending in "*" standing for
// every protocol that starts with what precedes it.
//
// In YAML it is either a mapping (`{peer: ID, protocols: [...]}`) or the
// flag's string form, `PEER_ID` or `PEER_ID=PROTO[,PROTO...]`.
type Allow struct {
	Peer      string   `yaml:"peer"`
	Protocols []string `yaml:"protocols"`
}

// Default values of Config.
const (
	DefaultIdentity         = "balancer.key"
	DefaultTTLDefault       = time.Minute
	DefaultTTLMax           = 10 * time.Minute
	DefaultDrainTimeout     = 30 * time.Second
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultDialTimeout      = 15 * time.Second
	// DefaultAdmin is the admin listener: loopback only.
	DefaultAdmin = "127.0.0.1:8242"
)

// DefaultListen is where serve listens unless told otherwise: TCP and QUIC
// on port 4242 of every interface.
var DefaultListen = []string{"/ip4/0.0.0.0/tcp/4242", "/ip4/0.0.0.0/udp/4242/quic-v1"}

// DefaultConfig returns the configuration serve runs with when given no
// file and no flags.
func DefaultConfig() Config {
	return Config{
		Identity:         DefaultIdentity,
		Listen:           append([]string(nil), DefaultListen...),
		TTLDefault:       DefaultTTLDefault,
		TTLMax:           DefaultTTLMax,
		DrainTimeout:     DefaultDrainTimeout,
		HandshakeTimeout: DefaultHandshakeTimeout,
		DialTimeout:      DefaultDialTimeout,
		LogLevel:         "info",
		LogFormat:        "text",
		ProbeInterval:    5 * time.Second,
		Admin:            DefaultAdmin,
		Limits: Limits{
			ProtocolsPerRequest: balancer.DefaultLimits().ProtocolsPerRequest,
			RoutesPerBackend:    balancer.DefaultLimits().RoutesPerBackend,
		},
		Health: Health{
			ConsecutiveFailures: balancer.DefaultHealth().ConsecutiveFailures,
			BaseEjection:        balancer.DefaultHealth().BaseEjection,
			MaxEjection:         balancer.DefaultHealth().MaxEjection,
		},
	}
}

// ParseAllow parses the flag form of an Allow: `PEER_ID` (any protocol) or
// `PEER_ID=PROTO[,PROTO...]`.
func ParseAllow(s string) (Allow, error) {
	id, protos, found := strings.Cut(s, "=")
	a := Allow{Peer: strings.TrimSpace(id)}
	if found {
		for _, p := range strings.Split(protos, ",") {
			if p = strings.TrimSpace(p); p != "" {
				a.Protocols = append(a.Protocols, p)
			}
		}
		if len(a.Protocols) == 0 {
			return Allow{}, fmt.Errorf("allow %q: no protocol after '='", s)
		}
	}
	if _, err := a.PeerID(); err != nil {
		return Allow{}, fmt.Errorf("allow %q: %w", s, err)
	}
	return a, nil
}

// PeerID decodes Peer.
func (a Allow) PeerID() (peer.ID, error) {
	if a.Peer == "" {
		return "", errors.New("no peer ID")
	}
	id, err := peer.Decode(a.Peer)
	if err != nil {
		return "", fmt.Errorf("bad peer ID %q: %w", a.Peer, err)
	}
	return id, nil
}

// String returns the flag form.
func (a Allow) String() string {
	if len(a.Protocols) == 0 {
		return a.Peer
	}
	return a.Peer + "=" + strings.Join(a.Protocols, ",")
}

// UnmarshalYAML accepts the mapping and the string form.
func (a *Allow) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		v, err := ParseAllow(n.Value)
		if err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		*a = v
		return nil
	}
	type plain Allow
	var v plain
	if err := n.Decode(&v); err != nil {
		return err
	}
	if _, err := Allow(v).PeerID(); err != nil {
		return fmt.Errorf("line %d: allow: %w", n.Line, err)
	}
	*a = Allow(v)
	return nil
}

// LoadFile reads the YAML file at path over cfg: keys present in the file
// replace cfg's values, the others keep them. Unknown keys are errors, so a
// typo does not pass silently. Every error is one line naming the file.
func LoadFile(path string, cfg *Config) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file %s: %w", path, bareErr(err))
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	before := cfg.Identity
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %s", path, oneLine(err.Error()))
	}
	if cfg.Identity != before && cfg.Identity != "" && !filepath.IsAbs(cfg.Identity) {
		cfg.Identity = filepath.Join(filepath.Dir(path), cfg.Identity)
	}
	return nil
}

// oneLine folds yaml's multi-line error lists into one line.
func oneLine(s string) string {
	s = strings.TrimPrefix(s, "yaml: unmarshal errors:\n")
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// bareErr strips the *fs.PathError wrapper, whose text repeats the path.
func bareErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// AdminEnabled reports whether the admin listener is on.
func (c *Config) AdminEnabled() bool { return c.Admin != "" && c.Admin != "off" }

// AdminToken reads the admin token from AdminTokenFile, or else from the
// BALANCER_ADMIN_TOKEN environment variable; "" when neither is set.
func (c *Config) AdminToken() (string, error) {
	if c.AdminTokenFile != "" {
		b, err := os.ReadFile(c.AdminTokenFile)
		if err != nil {
			return "", fmt.Errorf("admin token file %s: %w", c.AdminTokenFile, bareErr(err))
		}
		return strings.TrimSpace(string(b)), nil
	}
	return strings.TrimSpace(os.Getenv("BALANCER_ADMIN_TOKEN")), nil
}

// balancerOptions turns the pool, limit and health settings into balancer
// options, or says which setting is wrong.
func (c *Config) balancerOptions() ([]balancer.Option, error) {
	var opts []balancer.Option
	for i, p := range c.Pools {
		if p.Protocol == "" {
			return nil, fmt.Errorf("pools[%d]: no protocol", i)
		}
		st := balancer.LeastStreams
		if p.Strategy != "" {
			var err error
			if st, err = balancer.ParseStrategy(p.Strategy); err != nil {
				return nil, fmt.Errorf("pools[%d] (%s): %w", i, p.Protocol, err)
			}
		}
		opts = append(opts, balancer.WithPolicy(p.Protocol, balancer.Policy{Strategy: st, Sticky: p.Sticky}))
	}
	l := c.Limits
	opts = append(opts, balancer.WithLimits(balancer.Limits{
		ProtocolsPerRequest:        l.ProtocolsPerRequest,
		RoutesPerBackend:           l.RoutesPerBackend,
		Streams:                    l.Streams,
		StreamsPerBackend:          l.StreamsPerBackend,
		OutboundPerBackend:         l.OutboundPerBackend,
		StreamsPerPeer:             l.StreamsPerPeer,
		NewStreamsPerSecondPerPeer: l.NewStreamsPerSecondPerPeer,
	}))
	opts = append(opts, balancer.WithHealth(balancer.Health(c.Health)))
	if err := balancer.CheckOptions(opts...); err != nil {
		return nil, err
	}
	return opts, nil
}

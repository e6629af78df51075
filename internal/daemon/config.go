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
	"go.yaml.in/yaml/v3"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
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
	// Limits bounds what backends and remote peers can cause; a key
	// missing from the file keeps balancer.DefaultLimits, a 0 means no
	// limit of that kind.
	Limits balancer.Limits `yaml:"limits"`
	// Health tunes passive health checking; see balancer.Health.
	Health balancer.Health `yaml:"health"`
	// Outbound says where backends' outbound streams may make the
	// balancer dial, and to whom; see Outbound.
	Outbound Outbound `yaml:"outbound"`
	// TLSCert and TLSKey are the PEM files of the certificate (the chain,
	// leaf first) and private key that the secure WebSocket listeners
	// (/tls/ws) serve; both or neither. SIGHUP reads them again. In a
	// file, relative paths are taken from the file's directory.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// ConnsPerIP bounds the connections open at once from one IPv4
	// address or IPv6 /56; a burst of new ones is twice as many.
	ConnsPerIP int `yaml:"conns_per_ip"`
	// ProxyNetworks lists the addresses or CIDR prefixes of reverse
	// proxies (nginx, Caddy) in front of the balancer, which bring every
	// browser from their own address: they are exempt from the per-IP
	// connection limits.
	ProxyNetworks []string `yaml:"proxy_networks"`
	// Host limits: the keys resource_manager, connection_manager and
	// backend_networks (see node.Limits).
	Host node.Limits `yaml:",inline"`
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

// Default values of the settings that are the daemon's own; those of the
// balancer's settings are the balancer package's (DefaultTTL and so on).
const (
	DefaultIdentity     = "balancer.key"
	DefaultDrainTimeout = 30 * time.Second
	// DefaultAdmin is the admin listener: loopback only.
	DefaultAdmin = "127.0.0.1:8242"
)

// DefaultListen is where serve listens unless told otherwise: TCP and QUIC
// on port 4242 of every interface.
var DefaultListen = []string{"/ip4/0.0.0.0/tcp/4242", "/ip4/0.0.0.0/udp/4242/quic-v1"}

// DefaultConfig returns the configuration serve runs with when given no
// file and no flags. The balancer's settings take the balancer package's
// defaults, which are written nowhere else.
func DefaultConfig() Config {
	return Config{
		Identity:         DefaultIdentity,
		Listen:           append([]string(nil), DefaultListen...),
		TTLDefault:       balancer.DefaultTTL,
		TTLMax:           balancer.DefaultMaxTTL,
		DrainTimeout:     DefaultDrainTimeout,
		HandshakeTimeout: balancer.DefaultHandshakeTimeout,
		DialTimeout:      balancer.DefaultDialTimeout,
		ProbeInterval:    balancer.DefaultProbeInterval,
		LogLevel:         "info",
		LogFormat:        "text",
		Admin:            DefaultAdmin,
		Limits:           balancer.DefaultLimits(),
		Health:           balancer.DefaultHealth(),
		Outbound:         DefaultOutbound(),
		ConnsPerIP:       node.DefaultConnsPerIP,
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
	_, err := LoadFileSum(path, cfg)
	return err
}

// decodeFile decodes data, the bytes of the file at path, over cfg.
func decodeFile(path string, data []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	before := []string{cfg.Identity, cfg.TLSCert, cfg.TLSKey}
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %s", path, oneLine(err.Error()))
	}
	for i, p := range []*string{&cfg.Identity, &cfg.TLSCert, &cfg.TLSKey} {
		if *p != before[i] && *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(filepath.Dir(path), *p)
		}
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

// balancerOptions maps the settings of c that are the balancer's onto its
// options, the one place where they are built, and has the balancer check
// them: a refused value comes back named as the flag that sets it (the
// YAML key is the same name with underscores). It also returns the allowed
// backends' peer IDs.
func (c *Config) balancerOptions() ([]balancer.Option, []peer.ID, error) {
	opts := []balancer.Option{
		balancer.WithTTL(c.TTLDefault, c.TTLMax),
		balancer.WithIdleTimeout(c.IdleTimeout),
		balancer.WithProbeInterval(c.ProbeInterval),
		balancer.WithLimits(c.Limits),
		balancer.WithHealth(c.Health),
	}
	// 0 keeps the balancer's default, as it always has in the file.
	if c.HandshakeTimeout != 0 {
		opts = append(opts, balancer.WithHandshakeTimeout(c.HandshakeTimeout))
	}
	if c.DialTimeout != 0 {
		opts = append(opts, balancer.WithDialTimeout(c.DialTimeout))
	}
	var backends []peer.ID
	for _, a := range c.Allow {
		id, err := a.PeerID()
		if err != nil {
			return nil, nil, fmt.Errorf("allow %q: %w", a.String(), err)
		}
		for _, p := range a.Protocols {
			if p == "*" {
				continue
			}
			// The pattern as typed, star and all, so that the message
			// shows what the user wrote (issue 14); "*" is printable
			// ASCII, so the checks are those of the prefix.
			if err := wire.ValidateProtocol(p); err != nil {
				return nil, nil, fmt.Errorf("allow %q: %w", a.String(), err)
			}
		}
		backends = append(backends, id)
		opts = append(opts, balancer.WithAllow(id, a.Protocols...))
	}
	for i, p := range c.Pools {
		if p.Protocol == "" {
			return nil, nil, fmt.Errorf("pools[%d]: no protocol", i)
		}
		st := balancer.LeastStreams
		if p.Strategy != "" {
			var err error
			if st, err = balancer.ParseStrategy(p.Strategy); err != nil {
				return nil, nil, fmt.Errorf("pools[%d] (%s): %w", i, p.Protocol, err)
			}
		}
		opts = append(opts, balancer.WithPolicy(p.Protocol, balancer.Policy{Strategy: st, Sticky: p.Sticky}))
	}
	opts = append(opts, c.Outbound.balancerOptions()...)
	if err := balancer.CheckOptions(opts...); err != nil {
		return nil, nil, renamed(err)
	}
	return opts, backends, nil
}

// settingNames maps the balancer's names of its settings
// (balancer.OptionError.Setting) to ours.
var settingNames = map[string]string{
	"TTL default":                     "ttl-default",
	"TTL maximum":                     "ttl-max",
	"handshake timeout":               "handshake-timeout",
	"dial timeout":                    "dial-timeout",
	"idle timeout":                    "idle-timeout",
	"probe interval":                  "probe-interval",
	"health ejection times":           "health: base_ejection..max_ejection",
	"dials per second per backend":    "outbound: dials_per_second_per_backend",
	"new streams per second per peer": "limits: new_streams_per_second_per_peer",
}

// renamed names a setting the balancer refused as our flag does.
func renamed(err error) error {
	var oe *balancer.OptionError
	if errors.As(err, &oe) {
		if name, ok := settingNames[oe.Setting]; ok {
			return fmt.Errorf("%s %v: %s", name, oe.Value, oe.Reason)
		}
	}
	return err
}

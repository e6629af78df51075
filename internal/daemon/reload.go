package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/logging"
)

// Source is where Reload reads the configuration again: serve gives the
// daemon its --config file and the flags it was started with.
type Source struct {
	// File is the configuration file, "" when flags alone configure the
	// daemon.
	File string
	// Load builds the Config again as at start (the defaults, then File,
	// then the flags given) and returns the hex SHA-256 of the bytes of
	// File it read ("" without a file). LoadFileSum reads a file so.
	Load func() (cfg Config, sum string, err error)
	// Level is the level of the logger Start was given
	// (logging.NewVar), which Reload sets; nil leaves log_level needing
	// a restart.
	Level *slog.LevelVar
}

// SetSource lets Reload (SIGHUP, POST /api/reload) re-read the
// configuration from src; sum is the hash of the file the running Config
// was read from.
func (d *Daemon) SetSource(src Source, sum string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.src = src
	d.loaded.File, d.loaded.SHA256 = src.File, sum
}

// liveKeys are the configuration keys Reload applies at once; every other
// key that a reload changes is reported as needing a restart. A key added
// to Config therefore needs a restart until it is listed here and applied
// in Reload.
var liveKeys = map[string]bool{
	"allow": true, "ttl_default": true, "ttl_max": true, "drain_timeout": true,
	"handshake_timeout": true, "dial_timeout": true, "idle_timeout": true,
	"probe_interval": true, "log_level": true, "pools": true, "limits": true,
	"health": true, "outbound": true,
}

// Reload reads the configuration again from the Source and applies what
// can change without a restart, all of it or, when anything in it is
// invalid, none of it: the error is then one line naming the culprit, and
// the answer still describes the configuration in force. Streams in flight
// are never cut (balancer.Balancer.Update says how each setting applies).
// Settings that cannot change live are listed in the answer's NeedsRestart
// and keep their values.
//
// It also reads the TLS certificate files again (ReloadCertificate), for a
// renewed certificate, whether or not the configuration file is valid; a
// broken renewal is logged and the certificate in use stays.
func (d *Daemon) Reload() (*admin.ReloadResult, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if err := d.ReloadCertificate(); err != nil {
		d.log.Error("TLS certificate not reloaded; serving the previous one", "err", err)
	}
	d.mu.Lock()
	src, old := d.src, d.cfg
	d.mu.Unlock()
	res, err := d.reload(src, old)
	if err != nil {
		d.log.Warn("reload refused; the configuration in force is unchanged", "file", src.File, "err", err)
		return &admin.ReloadResult{Changed: []string{}, Config: *d.configInfo()}, err
	}
	return res, nil
}

func (d *Daemon) reload(src Source, old Config) (*admin.ReloadResult, error) {
	if src.Load == nil {
		return nil, errors.New("no configuration source to reload from")
	}
	cfg, sum, err := src.Load()
	if err != nil {
		return nil, err
	}
	p, err := cfg.plan()
	if err != nil {
		return nil, err
	}
	changed, restart := diff(old, cfg, src.Level != nil)
	// The settings that need a restart keep the values in force.
	inForce := cfg
	for _, k := range restart {
		copyKey(&inForce, old, k)
	}
	if err := d.lb.Update(p.opts...); err != nil {
		return nil, renamed(err)
	}
	d.gater.set(inForce.Outbound.DialPolicy)
	if src.Level != nil {
		lvl, _ := logging.ParseLevel(inForce.LogLevel) // checked by plan
		src.Level.Set(lvl)
	}
	d.mu.Lock()
	d.cfg = inForce
	d.loaded = admin.ConfigInfo{File: src.File, SHA256: sum, LoadedAt: time.Now(), NeedsRestart: restart}
	d.mu.Unlock()
	d.log.Info("configuration reloaded", "file", src.File, "sha256", short(sum), "changed", changed)
	d.logAllowChanges(old.Allow, inForce.Allow)
	if len(restart) > 0 {
		d.log.Warn("changed settings need a restart; their values in force are unchanged", "settings", restart)
	}
	return &admin.ReloadResult{OK: true, Changed: changed, NeedsRestart: restart, Config: *d.configInfo()}, nil
}

// logAllowChanges logs each backend a reload allowed, changed or withdrew.
// go-libp2p's resource manager keeps the limits it was built with, so a
// backend allowed now has the default per-peer limits, not the raised ones
// (node.Config.LinkPeers), until a restart: that is said, not left silent.
func (d *Daemon) logAllowChanges(old, now []Allow) {
	grants := func(list []Allow) map[string]string {
		m := map[string]string{}
		for _, a := range list {
			m[a.Peer] += allowed(a.Protocols)
		}
		return m
	}
	before, after := grants(old), grants(now)
	var added []string
	for _, a := range now {
		was, ok := before[a.Peer]
		switch {
		case !ok:
			added = append(added, a.Peer)
			d.log.Info("backend allowed", "peer", a.Peer, "protocols", allowed(a.Protocols))
		case was != after[a.Peer]:
			d.log.Info("backend's grant changed", "peer", a.Peer, "protocols", allowed(a.Protocols))
		}
	}
	for _, a := range old {
		if _, ok := after[a.Peer]; !ok {
			d.log.Info("backend no longer allowed; its routes are removed, its streams in flight go on", "peer", a.Peer)
		}
	}
	if len(added) > 0 {
		d.log.Warn("backends allowed by a reload keep go-libp2p's default per-peer resource limits until a restart", "peers", added)
	}
}

// diff lists the keys whose values differ between old and cfg: those
// applied live, and those that need a restart.
func diff(old, cfg Config, levelLive bool) (changed, restart []string) {
	changed = []string{}
	nv := keyed(reflect.ValueOf(&cfg).Elem())
	for k, ov := range keyed(reflect.ValueOf(&old).Elem()) {
		if reflect.DeepEqual(ov.Interface(), nv[k].Interface()) {
			continue
		}
		if liveKeys[k] && (k != "log_level" || levelLive) {
			changed = append(changed, k)
		} else {
			restart = append(restart, k)
		}
	}
	slices.Sort(changed)
	slices.Sort(restart)
	return changed, restart
}

// copyKey sets the setting of dst whose key is k to its value in src.
func copyKey(dst *Config, src Config, k string) {
	keyed(reflect.ValueOf(dst).Elem())[k].Set(keyed(reflect.ValueOf(&src).Elem())[k])
}

// keyed maps each top-level key of the configuration file to its field in
// v, a Config: the fields of an inline struct (node.Limits) are keys of
// their own.
func keyed(v reflect.Value) map[string]reflect.Value {
	out := map[string]reflect.Value{}
	for i := range v.NumField() {
		f := v.Type().Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if opts == "inline" && f.Type.Kind() == reflect.Struct {
			maps.Copy(out, keyed(v.Field(i)))
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = v.Field(i)
	}
	return out
}

// configInfo says which configuration is in force.
func (d *Daemon) configInfo() *admin.ConfigInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.loaded
	c.NeedsRestart = slices.Clone(c.NeedsRestart)
	return &c
}

// Config returns the configuration in force: the one Start was given, with
// what reloads changed live.
func (d *Daemon) Config() Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

func short(sum string) string { return sum[:min(len(sum), 12)] }

// LoadFileSum is LoadFile, and also returns the hex SHA-256 of the bytes it
// read, which tells an operator which version of the file is in force.
func LoadFileSum(path string, cfg *Config) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("config file %s: %w", path, bareErr(err))
	}
	if err := decodeFile(path, data, cfg); err != nil {
		return "", err
	}
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:]), nil
}

// gater is the host's connection gater, with a dial policy that Reload can
// replace; balancer.DialGater judges each address under the policy in
// force.
type gater struct {
	p atomic.Pointer[balancer.DialGater]
}

func newGater(p balancer.DialPolicy) *gater {
	g := &gater{}
	g.set(p)
	return g
}

func (g *gater) set(p balancer.DialPolicy) { g.p.Store(&balancer.DialGater{Policy: p}) }

func (g *gater) InterceptPeerDial(p peer.ID) bool { return g.p.Load().InterceptPeerDial(p) }
func (g *gater) InterceptAddrDial(p peer.ID, a ma.Multiaddr) bool {
	return g.p.Load().InterceptAddrDial(p, a)
}
func (g *gater) InterceptAccept(a network.ConnMultiaddrs) bool { return g.p.Load().InterceptAccept(a) }
func (g *gater) InterceptSecured(d network.Direction, p peer.ID, a network.ConnMultiaddrs) bool {
	return g.p.Load().InterceptSecured(d, p, a)
}
func (g *gater) InterceptUpgraded(c network.Conn) (bool, control.DisconnectReason) {
	return g.p.Load().InterceptUpgraded(c)
}

package balancer

import (
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// This file keeps what the balancer advertises through identify readable by
// every peer (issue 11 item 4): the routed protocols are capped so that the
// host's whole identify message fits in IdentifyBudget, and changes of the
// routed set are announced to identify at most twice a second.

// IdentifyBudget is the most bytes the balancer lets its host's identify
// message take: go-libp2p's own maxOwnIdentifyMsgSize (4 KiB, "to be
// compatible with rust-libp2p"). go-libp2p and js-libp2p read identify
// messages of at most 8 KiB and rust-libp2p 4 KiB, and go-libp2p leaves
// the listen addresses out of its own message once protocols, versions and
// addresses pass 4 KiB less 256 bytes, so peers would learn the routed
// protocols but not where to reach the balancer. A registration that would
// take the message past the budget is refused with RESOURCE_LIMIT_EXCEEDED.
const IdentifyBudget = 4096

// PushInterval is the least time between two announcements of route
// changes to identify, each of which makes identify push the whole message
// to every connected peer: a backend looping on register and release would
// otherwise send a push to every peer per request. The first change after a
// quiet interval is announced at once; later ones wait for the interval to
// end, and go out together.
const PushInterval = 500 * time.Millisecond

// Parts of the identify message the balancer cannot read from its host, or
// that depend on the connection, with the room allowed for each.
const (
	// versionAllowance covers protocol_version and agent_version with
	// their framing. go-libp2p's defaults are "ipfs/0.1.0" and the main
	// module's path@version, about 60 bytes; a host built with a longer
	// libp2p.UserAgent leaves less room for routes than the estimate says.
	versionAllowance = 128
	// observedAllowance covers observed_addr, the peer's own address as
	// the balancer sees it: 25 bytes for IPv6 and QUIC, 64 allowed.
	observedAllowance = 2 + 64
	// framing is the length prefixes of the message, written in two parts
	// (the signed peer record apart) once it passes 2 KiB.
	framing = 2 * 2
	// trimBuffer is the room go-libp2p keeps when it decides whether the
	// listen addresses fit (the 256 bytes of buffer in updateSnapshot).
	trimBuffer = 256
)

// identifySize estimates, conservatively, the bytes of the identify message
// the host would send if it served protos: every protocol, every listen
// address, the signed peer record and public key as they are now, and the
// allowances above. It also takes go-libp2p's own rule for keeping the
// listen addresses into account, so that a size within IdentifyBudget
// means the addresses are sent. Called with b.mu held.
func (b *Balancer) identifySize(protos map[protocol.ID]bool) int {
	size := versionAllowance + observedAllowance + framing
	// go-libp2p keeps the listen addresses while the raw protocol IDs, the
	// versions and the addresses fit in maxOwnIdentifyMsgSize less 256.
	trim := versionAllowance + trimBuffer
	for p := range protos {
		size += field(len(p))
		trim += len(p)
	}
	for _, a := range b.h.Addrs() {
		n := len(a.Bytes())
		size += field(n)
		trim += n
	}
	ps := b.h.Peerstore()
	if k := ps.PubKey(b.h.ID()); k != nil {
		if kb, err := crypto.MarshalPublicKey(k); err == nil {
			size += field(len(kb))
		}
	}
	size += field(signedRecordSize(ps, b.h.ID()))
	return max(size, trim)
}

// signedRecordSize is the size of the host's signed peer record, which
// lists its addresses again, with its public key and signature: 0 when the
// host has none (libp2p.DisableSignedPeerRecord), since identify then sends
// none.
func signedRecordSize(ps peerstore.Peerstore, self peer.ID) int {
	cab, ok := peerstore.GetCertifiedAddrBook(ps)
	if !ok {
		return 0
	}
	env := cab.GetPeerRecord(self)
	if env == nil {
		return 0
	}
	raw, err := env.Marshal()
	if err != nil {
		return 0
	}
	return len(raw)
}

// field is the size of a length-delimited protobuf field of n bytes with a
// tag under 16, as every field of the identify message has.
func field(n int) int { return 1 + protowire.SizeVarint(uint64(n)) + n }

// advertisedAfter is the set of protocols the host would advertise once req
// from be (nil when it has no state yet) were applied, counting every route,
// suspended ones too, since they come back into identify when their backend
// reconnects. Called with b.mu held.
func (b *Balancer) advertisedAfter(be *backendState, req *pb.RoutingRequest, hostProtos map[protocol.ID]bool) map[protocol.ID]bool {
	after := make(map[protocol.ID]bool, len(hostProtos)+len(b.pools)+len(req.GetProtocols()))
	for p := range hostProtos {
		after[p] = true
	}
	for p := range b.pools {
		after[p] = true
	}
	for _, s := range req.GetProtocols() {
		after[protocol.ID(s)] = true
	}
	// Releases apply after additions: a protocol leaves the set when no
	// other backend routes it.
	for _, s := range req.GetRelease() {
		p := protocol.ID(s)
		if hostProtos[p] {
			continue
		}
		others := false
		if pl := b.pools[p]; pl != nil {
			for _, r := range pl.routes {
				if r.backend != be {
					others = true
					break
				}
			}
		}
		if !others {
			delete(after, p)
		}
	}
	return after
}

// checkIdentify refuses req when it would add protocols to what the host
// advertises and take the identify message past IdentifyBudget. A request
// that adds nothing new (an extension, a release) always passes, so that
// routes already granted can be kept even if the host's addresses have
// grown since. Called with b.mu held.
func (b *Balancer) checkIdentify(be *backendState, req *pb.RoutingRequest, hostProtos map[protocol.ID]bool) *pb.RoutingResponse {
	grows := false
	for _, s := range req.GetProtocols() {
		if p := protocol.ID(s); b.pools[p] == nil && !hostProtos[p] {
			grows = true
			break
		}
	}
	if !grows {
		return nil
	}
	if size := b.identifySize(b.advertisedAfter(be, req, hostProtos)); size > IdentifyBudget {
		return refuse(pb.Status_RESOURCE_LIMIT_EXCEEDED, "the balancer's identify message would take about %d bytes with these protocols, over its %d-byte budget (every protocol the balancer routes is advertised in identify)", size, IdentifyBudget)
	}
	return nil
}

// announce tells the host's subscribers (identify, which pushes to
// connected peers) which protocols refresh added and removed since the last
// announcement, at most once per PushInterval: at once after a quiet
// interval, else when the interval ends, with every change made meanwhile.
// Called with b.mu held.
func (b *Balancer) announce() {
	if len(b.added) == 0 && len(b.removed) == 0 || b.pushTimer != nil {
		return
	}
	wait := PushInterval - time.Since(b.lastPush)
	if wait <= 0 {
		b.emitProtocols()
		return
	}
	b.pushTimer = time.AfterFunc(wait, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.pushTimer = nil
		// Changes may have cancelled out meanwhile (see refresh).
		if !b.closed && (len(b.added) > 0 || len(b.removed) > 0) {
			b.emitProtocols()
		}
	})
}

// flushAnnounce announces the pending changes now, for Close: the emitter
// closes next. Called with b.mu held.
func (b *Balancer) flushAnnounce() {
	if b.pushTimer != nil {
		b.pushTimer.Stop()
		b.pushTimer = nil
	}
	if len(b.added) > 0 || len(b.removed) > 0 {
		b.emitProtocols()
	}
}

// emitProtocols emits the pending changes. Called with b.mu held.
func (b *Balancer) emitProtocols() {
	_ = b.protoEmitter.Emit(event.EvtLocalProtocolsUpdated{Added: b.added, Removed: b.removed})
	b.added, b.removed = nil, nil
	b.lastPush = time.Now()
}

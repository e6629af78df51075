// What a web page needs to reach services behind a libp2p-balancer: a
// js-libp2p node with the browser transports, an echo over a routed
// protocol, and a handler for streams that backends push to the page. The
// test page (test.js) and the example page (example.js) both use it.
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { webRTCDirect } from '@libp2p/webrtc'
import { webSockets } from '@libp2p/websockets'
import { webTransport } from '@libp2p/webtransport'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

// The protocols of examples/browser's backend, which test/browser's backend
// speaks too: the backend echoes what it reads on ECHO until the page
// half-closes, then opens a stream on PUSH to the page, through the
// balancer, and writes one line on it.
export const ECHO = '/libp2p-balancer/example/echo/1.0.0'
export const PUSH = '/libp2p-balancer/example/push/1.0.0'

// transportOf names the transport of a multiaddr as the pages show it.
export function transportOf (addr) {
  const s = addr.toString()
  if (s.includes('/webrtc-direct')) return 'webrtc-direct'
  if (s.includes('/webtransport')) return 'webtransport'
  if (s.includes('/tls/ws') || s.includes('/wss')) return 'wss'
  if (s.includes('/ws')) return 'ws'
  return 'other'
}

// startNode makes a js-libp2p node that dials only (a page cannot listen)
// over the browser transports. Browsers speak Noise, not TLS: the
// balancer's default host offers both. onPush is called with
// ({ from, text }) for each stream a backend pushes to the page.
export async function startNode ({ onPush } = {}) {
  const node = await createLibp2p({
    transports: [webSockets(), webTransport(), webRTCDirect()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    // The browser default refuses private addresses; the test and the
    // example run the balancer on loopback.
    connectionGater: { denyDialMultiaddr: async () => false },
    services: { identify: identify(), ping: ping() }
  })
  await node.handle(PUSH, async (stream, connection) => {
    const text = new TextDecoder().decode(await readAll(stream))
    await stream.close()
    onPush?.({ from: connection.remotePeer.toString(), text, protocol: PUSH })
  })
  return node
}

// readAll reads a stream to its end (the remote's half-close).
export async function readAll (stream) {
  const chunks = []
  let n = 0
  for await (const c of stream) {
    const b = c instanceof Uint8Array ? c : c.subarray()
    chunks.push(b)
    n += b.length
  }
  const out = new Uint8Array(n)
  let off = 0
  for (const b of chunks) {
    out.set(b, off)
    off += b.length
  }
  return out
}

// echo dials addr (a full multiaddr ending in /p2p/<balancer's peer ID>),
// opens ECHO, writes data in chunks that respect back-pressure, half-closes
// and reads the echo to its end. It returns what came back, the peer ID
// the connection reached and the time it took.
export async function echo (node, addr, data, { chunk = 64 << 10, signal } = {}) {
  const start = performance.now()
  const ma = multiaddr(addr)
  const connection = await node.dial(ma, { signal })
  const stream = await connection.newStream(ECHO, { signal })
  const reading = readAll(stream)
  for (let off = 0; off < data.length; off += chunk) {
    if (!stream.send(data.subarray(off, off + chunk))) {
      await stream.onDrain({ signal })
    }
  }
  await stream.close({ signal })
  const got = await reading
  return {
    got,
    remotePeer: connection.remotePeer.toString(),
    remoteAddr: connection.remoteAddr.toString(),
    ms: Math.round(performance.now() - start)
  }
}

// sameBytes says whether a and b hold the same bytes.
export function sameBytes (a, b) {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) return false
  }
  return true
}

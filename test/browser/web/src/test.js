// The page of test/browser's Go test. It reads from its URL the balancer's
// addresses (addr, repeated: one per transport) and the echo size, then for
// each address in turn: starts a fresh js-libp2p node (so that no
// connection is shared between transports), echoes `size` random bytes
// through the balancer, and waits for the stream the backend pushes back.
// window.results holds one entry per address; window.done turns true at the
// end. The Go test asserts on them.
import { echo, sameBytes, startNode, transportOf } from './client.js'

const params = new URLSearchParams(location.search)
const addrs = params.getAll('addr')
const size = Number(params.get('size') ?? 1 << 20)
const timeoutMs = Number(params.get('timeout') ?? 30000)

window.results = []
window.done = false

function randomBytes (n) {
  const b = new Uint8Array(n)
  for (let off = 0; off < n; off += 65536) {
    crypto.getRandomValues(b.subarray(off, Math.min(n, off + 65536)))
  }
  return b
}

// describe turns what a failed dial or stream throws into text: an Error
// (with the errors of an AggregateError), or a DOM Event such as a
// WebSocket's "error", which says nothing more than its type.
function describe (err) {
  if (err instanceof Event) return `${err.constructor.name} "${err.type}" (the browser gives no detail: see its console)`
  let s = String(err?.stack ?? err)
  for (const e of err?.errors ?? []) s += '\n  ' + describe(e)
  return s
}

async function one (addr) {
  const r = { addr, transport: transportOf(addr) }
  let pushed
  const push = new Promise(resolve => { pushed = resolve })
  const node = await startNode({ onPush: p => pushed(p) })
  r.pagePeer = node.peerId.toString()
  const signal = AbortSignal.timeout(timeoutMs)
  try {
    const data = randomBytes(size)
    const e = await echo(node, addr, data, { signal })
    r.remotePeer = e.remotePeer
    r.remoteAddr = e.remoteAddr
    r.sent = data.length
    r.received = e.got.length
    r.exact = sameBytes(data, e.got)
    r.ms = e.ms
    const p = await Promise.race([
      push,
      new Promise((resolve, reject) => signal.addEventListener('abort', () => reject(new Error('no stream pushed by the backend'))))
    ])
    r.pushFrom = p.from
    r.pushText = p.text
  } catch (err) {
    r.error = describe(err)
  } finally {
    await node.stop()
  }
  return r
}

for (const addr of addrs) {
  window.results.push(await one(addr))
}
window.done = true

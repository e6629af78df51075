// The page of examples/browser: it fetches the balancer's addresses from
// the example's /addrs.json, lets the user pick one and type a message,
// echoes it through the balancer to a private backend, and shows the
// stream the backend pushes back.
import { echo, startNode, transportOf } from './client.js'

const $ = id => document.getElementById(id)

function log (line) {
  const li = document.createElement('li')
  li.textContent = `${new Date().toLocaleTimeString()}  ${line}`
  $('log').prepend(li)
}

const node = await startNode({
  onPush: p => log(`pushed by the backend, from ${p.from}: ${p.text}`)
})
$('me').textContent = node.peerId.toString()

const addrs = await (await fetch('addrs.json')).json()
for (const a of addrs) {
  const o = document.createElement('option')
  o.value = a
  o.textContent = `${transportOf(a)}  ${a}`
  $('addr').append(o)
}

$('form').addEventListener('submit', async ev => {
  ev.preventDefault()
  const addr = $('addr').value
  const text = $('msg').value
  try {
    const e = await echo(node, addr, new TextEncoder().encode(text), { signal: AbortSignal.timeout(15000) })
    log(`echoed by ${e.remotePeer} over ${transportOf(e.remoteAddr)} in ${e.ms} ms: ${new TextDecoder().decode(e.got)}`)
  } catch (err) {
    log(`failed: ${err}`)
  }
})
$('send').disabled = false

// Load generator: many real yjs + y-websocket clients against one server, one JSON report.
//
//   node loadgen.mjs --url ws://127.0.0.1:1234/rooms --scenario room50 [--duration 10]
//
// Rooms are named "1/1", "1/2", ... so the same run works against every server
// (ours only accepts /rooms/{blog_id}/{post_id}). All clients live in this process, so
// latency is measured on one clock (performance.now()). Progress goes to stderr; stdout
// carries only {"phase": ...} markers (the caller samples server CPU between
// measure-start and measure-end) and the final {"report": ...} line.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { parseArgs } from 'node:util'

console.log = console.error
process.setMaxListeners(0)

const SCENARIOS = {
  // One busy room: 5 writers share 20 updates/s, each write also moves the writer's cursor.
  room50: { mode: 'traffic', rooms: 1, clients: 50, writers: 5, updatesPerSecond: 20, cursorMovesPerSecond: 20 },
  // The same per-room load in 20 small rooms.
  rooms20x5: { mode: 'traffic', rooms: 20, clients: 5, writers: 1, updatesPerSecond: 20, cursorMovesPerSecond: 20 },
  // Connected editors doing nothing (awareness renewals every 15 s still flow).
  idle1000: { mode: 'idle', rooms: 100, clients: 10 },
  // 10 clients connect in the same tick, to a fresh room and to a room with content.
  join10: { mode: 'join', rooms: 1, clients: 10 },
  // One awareness change in a settled 10-client room: messages received by all clients.
  awareness10: { mode: 'awareness', rooms: 1, clients: 10 }
}

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    scenario: { type: 'string' },
    duration: { type: 'string', default: '10' },
    'connect-timeout': { type: 'string', default: '30' },
    rooms: { type: 'string' },
    clients: { type: 'string' },
    writers: { type: 'string' },
    rate: { type: 'string' },
    'cursor-rate': { type: 'string' }
  }
})
if (!args.url || !(args.scenario in SCENARIOS)) {
  console.error(`usage: loadgen.mjs --url ws://host:port/rooms --scenario ${Object.keys(SCENARIOS).join('|')} [--duration s]`)
  process.exit(2)
}
const scenario = { ...SCENARIOS[args.scenario] }
if (args.rooms) scenario.rooms = Number(args.rooms)
if (args.clients) scenario.clients = Number(args.clients)
if (args.writers) scenario.writers = Number(args.writers)
if (args.rate) scenario.updatesPerSecond = Number(args.rate)
if (args['cursor-rate']) scenario.cursorMovesPerSecond = Number(args['cursor-rate'])
const duration = Number(args.duration) * 1000
const connectTimeout = Number(args['connect-timeout']) * 1000

const now = () => performance.now()
const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))
const phase = (name) => process.stdout.write(JSON.stringify({ phase: name }) + '\n')
const log = (...parts) => console.error(`[loadgen ${args.scenario}]`, ...parts)

// Resolves when check() holds, re-checked on every call of the returned poke; rejects at the deadline.
const until = (check, ms, what) => new Promise((resolve, reject) => {
  if (check()) return resolve(true)
  const timer = setTimeout(() => { waiters.delete(entry); reject(new Error(`timeout: ${what}`)) }, ms)
  const entry = () => { if (check()) { clearTimeout(timer); waiters.delete(entry); resolve(true) } }
  waiters.add(entry)
})
const waiters = new Set()
const poke = () => { for (const waiter of [...waiters]) waiter() }

const STAMP = /\|(\d+),(\d+),(\d+(?:\.\d+)?)/g

class Client {
  constructor (url, room, index) {
    this.room = room
    this.index = index
    this.doc = new Y.Doc()
    this.text = this.doc.getText('content')
    this.provider = new WebsocketProvider(url, room, this.doc, {
      WebSocketPolyfill: WebSocket, disableBc: true, connect: false
    })
    this.awareness = this.provider.awareness
    this.awareness.setLocalState({ collaboratorInfo: { id: index + 1, name: `user${index + 1}`, enteredAt: Date.now() } })
    this.messages = { sync: 0, awareness: 0 }
    this.latencies = null // set to an array while measuring
    this.received = 0
    this.syncedOnce = false
    // Count raw messages by type: y-websocket dispatches through a per-provider table.
    for (const [type, key] of [[0, 'sync'], [1, 'awareness']]) {
      const handler = this.provider.messageHandlers[type]
      this.provider.messageHandlers[type] = (...handlerArgs) => { this.messages[key]++; return handler(...handlerArgs) }
    }
    this.provider.on('sync', (synced) => { if (synced) this.syncedOnce = true; poke() })
    this.awareness.on('change', poke)
    this.text.observe((event) => {
      if (event.transaction.origin !== this.provider) return
      const at = now()
      for (const op of event.delta) {
        if (typeof op.insert !== 'string') continue
        for (const match of op.insert.matchAll(STAMP)) {
          if (this.latencies !== null) {
            this.latencies.push(at - Number(match[3]))
            this.received++
          }
        }
      }
      poke()
    })
  }

  connect () { this.provider.connect() }
  destroy () { this.provider.destroy(); this.doc.destroy() }
}

const roomName = (r) => `1/${r + 1}`

const openRooms = (rooms, clientsPerRoom, offset = 0) => {
  const all = []
  for (let r = 0; r < rooms; r++) {
    for (let c = 0; c < clientsPerRoom; c++) all.push(new Client(args.url, roomName(r + offset), c))
  }
  return all
}

const percentile = (sorted, p) => sorted.length === 0 ? null : sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))]
const round = (x, digits = 2) => x === null ? null : Number(x.toFixed(digits))

const connectAll = async (clients) => {
  const started = now()
  for (const client of clients) client.connect()
  try {
    await until(() => clients.every(c => c.syncedOnce), connectTimeout, 'all clients synced')
  } catch (error) {
    log(error.message)
  }
  return { synced: clients.filter(c => c.syncedOnce).length, seconds: round((now() - started) / 1000) }
}

async function traffic () {
  const { rooms, clients: perRoom, writers, updatesPerSecond, cursorMovesPerSecond } = scenario
  const clients = openRooms(rooms, perRoom)
  const connected = await connectAll(clients)
  log(`synced ${connected.synced}/${clients.length} in ${connected.seconds}s`)
  // Let the join-time awareness burst settle before measuring.
  await sleep(1000)
  for (const client of clients) { client.latencies = []; client.received = 0; client.messages.sync = 0; client.messages.awareness = 0 }

  const byRoom = Array.from({ length: rooms }, (_, r) => clients.slice(r * perRoom, (r + 1) * perRoom))
  let sent = 0
  let expected = 0
  let cursorMoves = 0
  let tick = 0
  const tickMs = 1000 / Math.max(updatesPerSecond, cursorMovesPerSecond)
  const updateEvery = Math.max(updatesPerSecond, cursorMovesPerSecond) / updatesPerSecond
  const cursorEvery = Math.max(updatesPerSecond, cursorMovesPerSecond) / cursorMovesPerSecond
  phase('measure-start')
  const started = now()
  // Fixed-rate schedule against the clock, so a slow server does not slow the writers down.
  while (now() - started < duration) {
    for (const members of byRoom) {
      const writer = members[tick % writers]
      if (tick % updateEvery < 1) {
        const live = members.filter(c => c !== writer && c.provider.wsconnected).length
        writer.text.insert(writer.text.length, `|${writer.index},${sent},${now().toFixed(3)}`)
        sent++
        expected += live
      }
      if (tick % cursorEvery < 1) {
        writer.awareness.setLocalStateField('cursor', { index: writer.text.length, at: Date.now() })
        cursorMoves++
      }
    }
    tick++
    const next = started + tick * tickMs
    await sleep(Math.max(0, next - now()))
  }
  const elapsed = (now() - started) / 1000
  phase('measure-end')
  const received = () => clients.reduce((sum, c) => sum + c.received, 0)
  try {
    await until(() => received() >= expected, 3000, 'deliveries drained')
  } catch (error) {
    log(error.message)
  }
  const latencies = clients.flatMap(c => c.latencies).sort((a, b) => a - b)
  const awarenessMessages = clients.reduce((sum, c) => sum + c.messages.awareness, 0)
  const report = {
    ...connected,
    clients: clients.length,
    measured_seconds: round(elapsed),
    updates_sent: sent,
    deliveries_expected: expected,
    deliveries_received: received(),
    loss: expected === 0 ? null : round(1 - received() / expected, 4),
    deliveries_per_second: round(received() / elapsed, 1),
    latency_ms_p50: round(percentile(latencies, 50)),
    latency_ms_p99: round(percentile(latencies, 99)),
    latency_ms_max: round(latencies.length ? latencies[latencies.length - 1] : null),
    cursor_moves: cursorMoves,
    awareness_messages_received: awarenessMessages,
    awareness_messages_per_change: cursorMoves === 0 ? null : round(awarenessMessages / cursorMoves, 1),
    still_connected: clients.filter(c => c.provider.wsconnected).length
  }
  clients.forEach(c => c.destroy())
  return report
}

async function idle () {
  const clients = openRooms(scenario.rooms, scenario.clients)
  phase('connect-start')
  const connected = await connectAll(clients)
  log(`synced ${connected.synced}/${clients.length} in ${connected.seconds}s`)
  await sleep(2000)
  phase('measure-start')
  await sleep(duration)
  phase('measure-end')
  const report = { ...connected, clients: clients.length, still_connected: clients.filter(c => c.provider.wsconnected).length }
  clients.forEach(c => c.destroy())
  return report
}

async function join () {
  const joinAll = async (joiners, hasContent) => {
    const started = now()
    for (const client of joiners) client.connect() // same tick
    const done = () => joiners.filter(c => c.syncedOnce && hasContent(c)).length
    try {
      await until(() => done() === joiners.length, Math.min(connectTimeout, 10000), 'joiners synced')
    } catch (error) {
      log(error.message)
    }
    return { synced: done(), seconds: round((now() - started) / 1000) }
  }
  phase('measure-start')
  // A fresh room: the joiners race the room's creation on the server.
  const fresh = openRooms(1, scenario.clients)
  const freshRoom = await joinAll(fresh, () => true)

  // A room with content, held open by its writer: "synced" also means "has the document".
  const [seed] = openRooms(1, 1, 1)
  seed.connect()
  await until(() => seed.syncedOnce, connectTimeout, 'seed synced')
  for (let i = 0; i < 50; i++) seed.text.insert(seed.text.length, `paragraph ${i}. `)
  const content = seed.text.toString()
  // Round trip through the server: a client that sees the content proves it is stored.
  const [probe] = openRooms(1, 1, 1)
  probe.connect()
  await until(() => probe.text.toString() === content, connectTimeout, 'seed content stored')
  probe.destroy()
  const populated = openRooms(1, scenario.clients, 1)
  const populatedRoom = await joinAll(populated, (c) => c.text.toString() === content)
  phase('measure-end')
  const report = {
    clients: scenario.clients,
    synced: freshRoom.synced,
    fresh_room: freshRoom,
    populated_room: populatedRoom
  }
  for (const c of [seed, ...fresh, ...populated]) c.destroy()
  return report
}

async function awareness () {
  const clients = openRooms(1, scenario.clients)
  const connected = await connectAll(clients)
  const everyoneSeesEveryone = () => clients.every(c => c.awareness.getStates().size === clients.length)
  try {
    await until(everyoneSeesEveryone, connectTimeout, 'awareness settled')
  } catch (error) {
    log(error.message)
  }
  const settled = everyoneSeesEveryone()
  // Quiet period: join-time echoes must be over before counting.
  await sleep(1000)
  for (const c of clients) c.messages.awareness = 0
  phase('measure-start')
  const [mover, ...others] = clients
  mover.awareness.setLocalStateField('cursor', { index: 1 })
  const seen = () => others.filter(c => c.awareness.getStates().get(mover.doc.clientID)?.cursor?.index === 1).length
  try {
    await until(() => seen() === others.length, 5000, 'change seen by all')
  } catch (error) {
    log(error.message)
  }
  // Echoes arrive after the first delivery; give them a bounded window to land.
  await sleep(1000)
  phase('measure-end')
  const report = {
    ...connected,
    clients: clients.length,
    settled,
    saw_change: seen(),
    awareness_messages_received: clients.reduce((sum, c) => sum + c.messages.awareness, 0)
  }
  clients.forEach(c => c.destroy())
  return report
}

const modes = { traffic, idle, join, awareness }
const report = await modes[scenario.mode]()
process.stdout.write(JSON.stringify({ report: { scenario: args.scenario, ...scenario, ...report } }) + '\n')
process.exit(0)

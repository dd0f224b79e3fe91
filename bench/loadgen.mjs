// Load generator: many real yjs + y-websocket clients against one server, one JSON report.
//
//   node loadgen.mjs --url ws://127.0.0.1:1234/rooms --scenario room50 [--duration 10] [--procs N]
//
// Rooms are named "1/1", "1/2", ... so the same run works against every server
// (ours only accepts /rooms/{blog_id}/{post_id}). Progress goes to stderr; stdout
// carries only {"phase": ...} markers (the caller samples server CPU between
// measure-start and measure-end) and the final {"report": ...} line.
//
// --procs N (traffic and idle scenarios): the clients are dealt round-robin to N forked
// worker processes (client k of the scenario goes to worker k % N), so a client does not
// wait behind every other client of the room applying the same update in one event loop.
// This process then only coordinates: all workers synced -> one common start time ->
// measured phase -> per-room send counts -> each worker drains what it should receive ->
// reports merged into the same JSON report. Latency is stamped on a clock common to all
// processes: performance.timeOrigin + performance.now(), shifted by this process's
// timeOrigin (so with --procs 1, everything in one process, it is plain performance.now()).
// Default: min(4, cores + 1) for traffic/idle scenarios with >= 20 clients, 1 otherwise; join
// and awareness scenarios always run in one process.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { parseArgs } from 'node:util'
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { availableParallelism } from 'node:os'

console.log = console.error
process.setMaxListeners(0)

const SCENARIOS = {
  // One busy room: 5 writers share 20 updates/s, each write also moves the writer's cursor.
  room50: { mode: 'traffic', rooms: 1, clients: 50, writers: 5, updatesPerSecond: 20, cursorMovesPerSecond: 20 },
  // The same per-room load in 20 small rooms.
  rooms20x5: { mode: 'traffic', rooms: 20, clients: 5, writers: 1, updatesPerSecond: 20, cursorMovesPerSecond: 20 },
  // Every client writing: 10 rooms x 5 writers taking turns, 300 updates/s per room (3,000 in
  // all; --rate sets the per-room rate). Awareness is on: every client has its presence state
  // (renewed every 15 s); cursors stay put unless --cursor-rate says otherwise, so what is
  // measured is the write path. A writer replaces
  // its previous stamp (one transaction: delete it, insert the new one), so the documents stay
  // bounded however long the run: the cost measured is the update's, not a growing document's.
  writers10x5: { mode: 'traffic', rooms: 10, clients: 5, writers: 5, updatesPerSecond: 300, cursorMovesPerSecond: 0, replace: true },
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
    'cursor-rate': { type: 'string' },
    replace: { type: 'string' }, // 'yes' | 'no': writers replace their previous stamp or only add
    procs: { type: 'string' },
    // Internal, set by the coordinating process on its workers.
    worker: { type: 'string' },
    t0: { type: 'string' }
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
if (args.replace) scenario.replace = args.replace === 'yes'
const duration = Number(args.duration) * 1000
const connectTimeout = Number(args['connect-timeout']) * 1000
// Measured on a 2-core machine: 2-3 processes beat 1 and 4 (more only adds contention
// with the server for the same cores), so one more than the cores, at most 4.
const DEFAULT_PROCS = Math.min(4, availableParallelism() + 1)
const MAX_PROCS = 16
const totalClients = scenario.rooms * scenario.clients
const splittable = scenario.mode === 'traffic' || scenario.mode === 'idle'
let procs = args.procs === undefined ? (splittable && totalClients >= 20 ? DEFAULT_PROCS : 1) : Number(args.procs)
if (!Number.isInteger(procs) || procs < 1) {
  console.error('--procs must be a positive integer')
  process.exit(2)
}
if (!splittable && procs > 1) {
  console.error(`[loadgen ${args.scenario}] --procs ${procs} ignored: ${scenario.mode} scenarios run in one process`)
  procs = 1
}
procs = Math.min(procs, totalClients, MAX_PROCS)
const workerIndex = args.worker === undefined ? null : Number(args.worker)

// One clock for every process of a run: ms since the coordinator's timeOrigin.
const shift = args.t0 === undefined ? 0 : performance.timeOrigin - Number(args.t0)
const now = () => shift + performance.now()
const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))
const phase = (name) => process.stdout.write(JSON.stringify({ phase: name }) + '\n')
const log = (...parts) => console.error(`[loadgen ${args.scenario}${workerIndex === null ? '' : ` w${workerIndex}`}]`, ...parts)

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

// A writer's update: its stamp appended, and with `replace`, its previous stamp deleted in the
// same transaction (one update message carrying both).
const write = (writer, stamp) => {
  if (!scenario.replace || writer.lastStamp === null) {
    writer.text.insert(writer.text.length, stamp)
  } else {
    writer.doc.transact(() => {
      const at = writer.text.toString().indexOf(writer.lastStamp)
      if (at >= 0) writer.text.delete(at, writer.lastStamp.length)
      writer.text.insert(writer.text.length, stamp)
    }, null)
  }
  writer.lastStamp = stamp
}

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
    this.measureFrom = -Infinity // split runs: only stamps from the common start count
    this.received = 0
    this.syncedOnce = false
    this.lastStamp = null
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
          if (this.latencies !== null && Number(match[3]) >= this.measureFrom) {
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
        write(writer, `|${writer.index},${sent},${now().toFixed(3)}`)
        sent++
        expected += live
      }
      if (cursorMovesPerSecond > 0 && tick % cursorEvery < 1) {
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

// ---- Split runs (--procs N > 1): worker side -------------------------------------------

// Messages from the other side of the IPC channel, taken by type; pings answered at once.
const inbox = []
const take = async (type, ms, gone = () => false) => {
  const index = () => inbox.findIndex(m => m.type === type)
  await until(() => index() >= 0 || gone(), ms, `message ${type}`)
  if (index() < 0) throw new Error(`gone before message ${type}`)
  return inbox.splice(index(), 1)[0]
}

async function worker () {
  process.on('disconnect', () => process.exit(1)) // the coordinator is gone
  process.on('message', (m) => {
    if (m.type === 'ping') return process.send({ type: 'pong', t: m.t, c: now() })
    inbox.push(m)
    poke()
  })
  const { rooms, clients: perRoom, writers, updatesPerSecond, cursorMovesPerSecond, mode } = scenario
  const mine = []
  const local = Array.from({ length: rooms }, () => new Map()) // room -> index -> client
  for (let r = 0; r < rooms; r++) {
    for (let c = 0; c < perRoom; c++) {
      if ((r * perRoom + c) % procs !== workerIndex) continue
      const client = new Client(args.url, roomName(r), c)
      mine.push(client)
      local[r].set(c, client)
    }
  }
  const connected = await connectAll(mine)
  process.send({ type: 'synced', ...connected })
  const late = connectTimeout + duration + 60000 // bounded waits, longer than the coordinator's
  if (mode === 'idle') {
    await take('finish', late)
    process.send({ type: 'report', still_connected: mine.filter(c => c.provider.wsconnected).length })
  } else {
    const { at } = await take('start', late)
    // Reset ahead of the start, so an early update from a faster worker is not missed;
    // deliveries count only for updates stamped from the common start on.
    await sleep(Math.max(0, at - 250 - now()))
    for (const client of mine) { client.latencies = []; client.received = 0; client.messages.sync = 0; client.messages.awareness = 0; client.measureFrom = at - 1 }
    // Timers may fire a little early; the schedule starts at the common instant, not before.
    for (let i = 0; i < 100 && now() < at; i++) await sleep(Math.max(1, at - now()))
    const sentByRoom = new Array(rooms).fill(0)
    const sentBy = new Map()
    let cursorMoves = 0
    let tick = 0
    const tickMs = 1000 / Math.max(updatesPerSecond, cursorMovesPerSecond)
    const updateEvery = Math.max(updatesPerSecond, cursorMovesPerSecond) / updatesPerSecond
    const cursorEvery = Math.max(updatesPerSecond, cursorMovesPerSecond) / cursorMovesPerSecond
    // The same schedule in every worker, from the same start: each writes for its own writers.
    const started = at
    while (now() - started < duration) {
      for (let r = 0; r < rooms; r++) {
        const writer = local[r].get(tick % writers)
        if (writer === undefined) continue
        if (tick % updateEvery < 1) {
          write(writer, `|${writer.index},${sentByRoom[r]},${now().toFixed(3)}`)
          sentByRoom[r]++
          sentBy.set(writer, (sentBy.get(writer) ?? 0) + 1)
        }
        if (cursorMovesPerSecond > 0 && tick % cursorEvery < 1) {
          writer.awareness.setLocalStateField('cursor', { index: writer.text.length, at: Date.now() })
          cursorMoves++
        }
      }
      tick++
      await sleep(Math.max(0, started + tick * tickMs - now()))
    }
    process.send({ type: 'sent', sentByRoom, cursorMoves, elapsed: (now() - started) / 1000 })
    // Every update reaches every live member of its room but its writer.
    const { totals } = await take('drain', late)
    const live = (c) => c.provider.wsconnected
    let expected = 0
    for (let r = 0; r < rooms; r++) expected += totals[r] * [...local[r].values()].filter(live).length
    for (const [writer, n] of sentBy) if (live(writer)) expected -= n
    const received = () => mine.reduce((sum, c) => sum + c.received, 0)
    try {
      await until(() => received() >= expected, 3000, 'deliveries drained')
    } catch (error) {
      log(error.message)
    }
    process.send({
      type: 'report',
      expected,
      received: received(),
      latencies: mine.flatMap(c => c.latencies),
      awareness_messages: mine.reduce((sum, c) => sum + c.messages.awareness, 0),
      still_connected: mine.filter(live).length
    })
  }
  await take('exit', late)
  mine.forEach(c => c.destroy())
  process.exit(0)
}

// ---- Split runs: coordinator side -------------------------------------------------------

async function coordinate () {
  const deadline = setTimeout(() => {
    log('watchdog: run took too long')
    for (const w of workers) w.child.kill()
    process.exit(1)
  }, connectTimeout + duration + 90000)
  const self = fileURLToPath(import.meta.url)
  const workers = Array.from({ length: procs }, (_, i) => {
    const child = fork(self, [...process.argv.slice(2), '--worker', String(i), '--t0', String(performance.timeOrigin)], {
      stdio: ['ignore', 'ignore', 'inherit', 'ipc']
    })
    const w = { child, inbox: [], exited: false, pongs: [] }
    child.on('message', (m) => {
      if (m.type === 'pong') w.pongs.push({ ...m, back: now() })
      else w.inbox.push(m)
      poke()
    })
    child.on('exit', () => { w.exited = true; poke() })
    return w
  })
  const takeEach = (type, ms) => Promise.all(workers.map(async (w) => {
    const index = () => w.inbox.findIndex(m => m.type === type)
    await until(() => index() >= 0 || w.exited, ms, `workers: ${type}`)
    if (index() < 0) throw new Error(`a worker exited before sending ${type}`)
    return w.inbox.splice(index(), 1)[0]
  }))
  const sendEach = (message) => workers.forEach(w => { if (!w.exited) w.child.send(message) })
  const finish = async (report) => {
    sendEach({ type: 'exit' })
    try {
      await until(() => workers.every(w => w.exited), 5000, 'workers exited')
    } catch (error) {
      log(error.message)
      for (const w of workers) if (!w.exited) w.child.kill()
    }
    clearTimeout(deadline)
    return { procs, ...report }
  }

  if (scenario.mode === 'idle') phase('connect-start')
  const synced = await takeEach('synced', connectTimeout + 30000)
  const connected = { synced: synced.reduce((s, m) => s + m.synced, 0), seconds: Math.max(...synced.map(m => m.seconds)) }
  log(`synced ${connected.synced}/${totalClients} in ${connected.seconds}s over ${procs} processes`)

  // How far apart the processes' clocks are: IPC ping, offset at the fastest round trip.
  for (let i = 0; i < 5; i++) {
    sendEach({ type: 'ping', t: now() })
    await until(() => workers.every(w => w.pongs.length > i), 2000, 'pongs').catch(() => {})
  }
  const skews = workers.map(w => {
    const best = w.pongs.reduce((a, b) => (b.back - b.t < a.back - a.t ? b : a), w.pongs[0])
    return best ? { offset: best.c - (best.t + best.back) / 2, rtt: best.back - best.t } : null
  }).filter(Boolean)
  const clockSkew = skews.length ? Math.max(...skews.map(s => Math.abs(s.offset))) : null
  log(`clock offsets (ms): ${skews.map(s => `${s.offset.toFixed(3)}±${(s.rtt / 2).toFixed(3)}`).join(' ')}`)

  if (scenario.mode === 'idle') {
    await sleep(2000)
    phase('measure-start')
    await sleep(duration)
    phase('measure-end')
    sendEach({ type: 'finish' })
    const reports = await takeEach('report', 10000)
    return finish({ ...connected, clients: totalClients, still_connected: reports.reduce((s, m) => s + m.still_connected, 0) })
  }

  // Let the join-time awareness burst settle, then start every worker at the same instant.
  const at = now() + 1000
  sendEach({ type: 'start', at })
  await sleep(Math.max(0, at - now()))
  phase('measure-start')
  const sents = await takeEach('sent', duration + 30000)
  phase('measure-end')
  const totals = Array.from({ length: scenario.rooms }, (_, r) => sents.reduce((s, m) => s + m.sentByRoom[r], 0))
  sendEach({ type: 'drain', totals })
  const reports = await takeEach('report', 10000)
  const elapsed = Math.max(...sents.map(m => m.elapsed))
  const sent = totals.reduce((a, b) => a + b, 0)
  const expected = reports.reduce((s, m) => s + m.expected, 0)
  const received = reports.reduce((s, m) => s + m.received, 0)
  const latencies = reports.flatMap(m => m.latencies).sort((a, b) => a - b)
  const cursorMoves = sents.reduce((s, m) => s + m.cursorMoves, 0)
  const awarenessMessages = reports.reduce((s, m) => s + m.awareness_messages, 0)
  return finish({
    ...connected,
    clients: totalClients,
    measured_seconds: round(elapsed),
    updates_sent: sent,
    deliveries_expected: expected,
    deliveries_received: received,
    loss: expected === 0 ? null : round(1 - received / expected, 4),
    deliveries_per_second: round(received / elapsed, 1),
    latency_ms_p50: round(percentile(latencies, 50)),
    latency_ms_p99: round(percentile(latencies, 99)),
    latency_ms_max: round(latencies.length ? latencies[latencies.length - 1] : null),
    cursor_moves: cursorMoves,
    awareness_messages_received: awarenessMessages,
    awareness_messages_per_change: cursorMoves === 0 ? null : round(awarenessMessages / cursorMoves, 1),
    still_connected: reports.reduce((s, m) => s + m.still_connected, 0),
    clock_skew_ms: clockSkew === null ? null : round(clockSkew, 3)
  })
}

if (workerIndex !== null) {
  await worker()
} else {
  const modes = { traffic, idle, join, awareness }
  const report = procs > 1 ? await coordinate() : await modes[scenario.mode]()
  process.stdout.write(JSON.stringify({ report: { scenario: args.scenario, ...scenario, procs, ...report } }) + '\n')
  process.exit(0)
}

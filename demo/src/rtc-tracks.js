// rtc-tracks: a small browser client for the server's event ingest (POST /api/events).
//
// Pages use it for what only the browser can see, such as a WebSocket that never reached the
// server. Best effort by design: it never throws at the caller and never makes the editor wait.
//
//   import { createTracker } from './rtc-tracks.js'
//   const tracker = createTracker({ endpoint: '/api/events', streamsUrl: '/api/streams' })
//   tracker.submit('client_errors', 'jetpack_rtc_connection_error', { blog_id: 1, ... })
//
// - Bounded: at most `maxQueue` events wait; when full the oldest is dropped (counted, and one
//   console.warn per burst of drops).
// - Batched: up to `batchSize` events per POST, sent when a batch fills, every
//   `flushIntervalMs`, on flush(), and by navigator.sendBeacon when the page is hidden
//   (pagehide, visibilitychange to hidden), the last moment a page can be sure to run code.
// - Retried: a batch that fails (network error, 408, 429, 5xx) is sent again, unchanged, after
//   an exponential backoff with jitter (Retry-After as the floor). Its event_ids never change,
//   so the server stores each event once however often a batch arrives.
// - Sampled: the stream configuration (GET streamsUrl, read once) gives each stream's
//   sample_rate; a session out of the sample is dropped here, with the very function the server
//   uses (tracks/sampling.py): FNV-1a 32-bit of "blog_id:post_id:session_id" / 2**32 < rate.
//
// Wire format: POST {"events": [{"event_id", "name", "ts", "props"}]}, answered by
// 202 {"accepted": n, "duplicates": n, "rejected": [{"index": i, "reason": "..."}]}.

const FNV_OFFSET_BASIS = 0x811c9dc5
const FNV_PRIME = 0x01000193
const utf8 = new TextEncoder()

/** FNV-1a, 32 bits, of a byte array: an unsigned integer below 2**32. */
export const fnv1a32 = (bytes) => {
  let hash = FNV_OFFSET_BASIS
  for (const byte of bytes) {
    hash ^= byte
    hash = Math.imul(hash, FNV_PRIME) // the low 32 bits of the product, as the spec needs
  }
  return hash >>> 0
}

// How one part of the sampling key is written: as Python's tracks.sampling._part writes it.
const keyPart = (value) => {
  if (value === null || value === undefined) return ''
  if (typeof value === 'string') return value
  if (typeof value === 'bigint' || typeof value === 'boolean') return String(value)
  if (typeof value === 'number') return Number.isInteger(value) ? String(value) : JSON.stringify(value)
  return JSON.stringify(value)
}

/** Where a session falls in [0, 1); the same number tracks.sampling.session_fraction gives. */
export const sessionFraction = (blogId, postId, sessionId) =>
  fnv1a32(utf8.encode(`${keyPart(blogId)}:${keyPart(postId)}:${keyPart(sessionId)}`)) / 2 ** 32

/** Whether a session is in a sample of `rate` (1 keeps all, 0 none). */
export const sessionInSample = (blogId, postId, sessionId, rate) =>
  sessionFraction(blogId, postId, sessionId) < rate

// Does a stream's event list (exact names or `prefix*` patterns) take this name?
const matches = (patterns, name) =>
  patterns.some((pattern) => (pattern.endsWith('*') ? name.startsWith(pattern.slice(0, -1)) : pattern === name))

const RETRYABLE = (status) => status === 408 || status === 429 || status >= 500

const retryAfterMs = (response) => {
  const value = response.headers.get('Retry-After')
  if (value === null) return 0
  const seconds = Number(value)
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000)
  const date = Date.parse(value)
  return Number.isNaN(date) ? 0 : Math.max(0, date - Date.now())
}

// Browsers cap the bodies of keepalive requests and beacons in flight at 64 KiB in total.
const KEEPALIVE_LIMIT = 60000

/**
 * @param {object} [options]
 * @param {string} [options.endpoint]  where batches are POSTed
 * @param {string | null} [options.streamsUrl]  the stream configuration (null: no local sampling)
 * @param {number} [options.maxQueue]  events waiting at most (oldest dropped beyond)
 * @param {number} [options.batchSize]  events per POST at most
 * @param {number} [options.flushIntervalMs]  periodic send (0: only when a batch fills or on flush())
 * @param {{baseDelayMs?: number, maxDelayMs?: number, maxAttempts?: number}} [options.retry]
 * @param {string} [options.eventPrefix]  prefix of connectionError's event name
 * @param {typeof fetch} [options.fetch]  injectable for tests
 */
export const createTracker = ({
  endpoint = '/api/events',
  streamsUrl = '/api/streams',
  maxQueue = 500,
  batchSize = 50,
  flushIntervalMs = 5000,
  retry = {},
  eventPrefix = 'jetpack_rtc_',
  fetch: fetchImpl = globalThis.fetch.bind(globalThis)
} = {}) => {
  const { baseDelayMs = 1000, maxDelayMs = 60000, maxAttempts = 8 } = retry
  const endpointUrl = new URL(endpoint, location.href)
  // A beacon to another origin must use a CORS-safelisted type, or the browser refuses it.
  const beaconType = endpointUrl.origin === location.origin ? 'application/json' : 'text/plain;charset=UTF-8'

  /** Events not yet handed to the network: {stream, event}. */
  let queue = []
  /** The batch that failed last and waits for its retry: {entries, attempt, timer}. */
  let failed = null
  let sending = null // the Promise of the POST in flight
  let streams = null // the client view of the stream configuration, once read
  let closed = false
  let dropBurst = false
  const stats = { submitted: 0, sent: 0, accepted: 0, duplicates: 0, rejected: 0, dropped: 0, sampledOut: 0, retries: 0, beacons: 0, lastRejections: [] }

  const streamsReady = streamsUrl === null
    ? Promise.resolve()
    // Bounded: sends wait for this, and must not wait on a server that never answers.
    : fetchImpl(new URL(streamsUrl, location.href), { credentials: 'same-origin', signal: AbortSignal.timeout(5000) })
      .then((response) => (response.ok ? response.json() : null))
      .then((view) => { streams = view?.streams ?? null })
      .catch(() => { streams = null }) // unknown: send everything, the server decides

  const streamOf = (entry) => {
    if (streams === null) return null
    if (entry.stream !== null && streams[entry.stream] !== undefined) return streams[entry.stream]
    return Object.values(streams).find((stream) => matches(stream.events ?? [], entry.event.name)) ?? null
  }

  // Drops what is out of the sample, once the configuration is known.
  const sampled = (entries) => entries.filter((entry) => {
    const stream = streamOf(entry)
    if (stream === null) return true
    const { blog_id: blogId, post_id: postId, session_id: sessionId } = entry.event.props
    if (sessionInSample(blogId, postId, sessionId, stream.sample_rate ?? 1)) return true
    stats.sampledOut++
    return false
  })

  const warnDrop = () => {
    stats.dropped++
    if (dropBurst) return
    dropBurst = true
    console.warn(`rtc-tracks: queue full (${maxQueue} events); dropping the oldest`)
  }

  const enqueue = (entry) => {
    if (queue.length >= maxQueue) {
      queue.shift()
      warnDrop()
    }
    queue.push(entry)
  }

  const bodyOf = (entries) => JSON.stringify({ events: entries.map((entry) => entry.event) })

  const backoffMs = (attempt, floorMs) => {
    const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** (attempt - 1))
    // "Full jitter" keeps retrying tabs from arriving in lockstep after an outage.
    return Math.max(floorMs, Math.random() * ceiling)
  }

  const scheduleRetry = (entries, attempt, floorMs) => {
    if (attempt >= maxAttempts) {
      stats.dropped += entries.length
      console.warn(`rtc-tracks: gave up on a batch of ${entries.length} after ${attempt} attempts`)
      return
    }
    failed = { entries, attempt, due: false, timer: null }
    const waiting = failed
    waiting.timer = setTimeout(() => { waiting.due = true; pump() }, backoffMs(attempt, floorMs))
  }

  // POST one batch; a retryable failure keeps it (same event_ids) for a later attempt.
  const post = async (entries, attempt) => {
    const body = bodyOf(entries)
    let response
    try {
      response = await fetchImpl(endpointUrl, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body,
        credentials: 'same-origin',
        keepalive: body.length <= KEEPALIVE_LIMIT // survives the page going away mid-request
      })
    } catch {
      scheduleRetry(entries, attempt + 1, 0)
      return false
    }
    if (response.status === 413 && entries.length > 1) {
      // Too big for the server: halve it (the halves go first, in order).
      const half = Math.ceil(entries.length / 2)
      queue = [...entries.slice(0, half), ...entries.slice(half), ...queue]
      return true
    }
    if (RETRYABLE(response.status)) {
      scheduleRetry(entries, attempt + 1, retryAfterMs(response))
      return false
    }
    stats.sent += entries.length
    dropBurst = false
    if (!response.ok) {
      // Another 4xx: the server will never take this batch, however often it is sent.
      stats.rejected += entries.length
      console.warn(`rtc-tracks: ${endpointUrl} refused a batch of ${entries.length}: HTTP ${response.status}`)
      return true
    }
    try {
      const result = await response.json()
      stats.accepted += result.accepted ?? 0
      stats.duplicates += result.duplicates ?? 0
      stats.rejected += result.rejected?.length ?? 0
      stats.lastRejections = result.rejected ?? []
    } catch {
      // A 2xx without the JSON body: the events are in; the counts are unknown.
    }
    return true
  }

  // Send what is due: the retry batch first when its timer fired (or `retryNow`), then full
  // batches (or everything with `all`). One POST at a time keeps order and caps the tab's load;
  // newer batches wait behind a batch that waits for its retry.
  const pump = async ({ all = false, retryNow = false } = {}) => {
    if (sending !== null) return sending
    sending = (async () => {
      await streamsReady
      if (failed !== null) {
        if (!retryNow && !failed.due) return
        const { entries, attempt, timer } = failed
        clearTimeout(timer)
        failed = null
        stats.retries++
        if (!(await post(entries, attempt))) return
      }
      while (queue.length > 0 && (all || queue.length >= batchSize)) {
        const entries = sampled(queue.splice(0, batchSize))
        if (entries.length > 0 && !(await post(entries, 0))) return
      }
    })().finally(() => { sending = null })
    return sending
  }

  // The page may never run code again: hand the pending events to the browser, unsampled ones
  // out. What the browser takes is gone from here; what it refuses waits for the next chance.
  const beaconAll = () => {
    if (typeof navigator.sendBeacon !== 'function') return
    const entries = [...(failed?.entries ?? []), ...queue]
    if (entries.length === 0) return
    if (failed !== null) clearTimeout(failed.timer)
    failed = null
    queue = []
    let pending = sampled(entries)
    while (pending.length > 0) {
      const chunk = pending.slice(0, batchSize)
      const body = bodyOf(chunk)
      if (body.length > KEEPALIVE_LIMIT || !navigator.sendBeacon(endpointUrl, new Blob([body], { type: beaconType }))) break
      stats.beacons++
      stats.sent += chunk.length
      pending = pending.slice(chunk.length)
    }
    queue = [...pending, ...queue]
  }

  const onVisibility = () => { if (document.visibilityState === 'hidden') beaconAll() }
  addEventListener('pagehide', beaconAll)
  document.addEventListener('visibilitychange', onVisibility)
  const interval = flushIntervalMs > 0 ? setInterval(() => { pump({ all: true }) }, flushIntervalMs) : null

  // After the POST in flight (which may predate the caller's events), send everything.
  const flush = async () => {
    if (sending !== null) await sending
    await pump({ all: true, retryNow: true })
  }

  const submit = (stream, name, props = {}) => {
    if (closed) return null
    const clean = {}
    // null and undefined are omitted, never sent (the tracks event rules).
    for (const [key, value] of Object.entries(props)) if (value !== null && value !== undefined) clean[key] = value
    stats.submitted++
    const event = { event_id: crypto.randomUUID(), name, ts: Date.now(), props: clean }
    enqueue({ stream, event })
    if (queue.length >= batchSize) pump()
    return event.event_id
  }

  return {
    /** Queue an event (`stream` names its stream for sampling; null: found by name). Returns its event_id. */
    submit,
    /** Send everything now (a waiting retry too); resolves when done or when a send failed. */
    flush,
    /**
     * A connection the server may never have seen: records `<prefix>connection_error` with the
     * tab's session id (the Y.Doc clientID), so server and client events of a session line up.
     */
    connectionError: ({ blog_id, post_id, session_id, wp_user_id, error_code, close_code }) =>
      submit(null, `${eventPrefix}connection_error`, { blog_id, post_id, session_id, wp_user_id, error_code, close_code }),
    /** Stop the timer and the page listeners, then send what is left. */
    close: async () => {
      if (closed) return
      closed = true
      if (interval !== null) clearInterval(interval)
      removeEventListener('pagehide', beaconAll)
      document.removeEventListener('visibilitychange', onVisibility)
      await flush()
    },
    /** Counters, and how many events are waiting (for tests and the console). */
    stats: () => ({ ...stats, queued: queue.length + (failed?.entries.length ?? 0) }),
    /** Resolves once the stream configuration was read (or could not be). */
    ready: streamsReady
  }
}

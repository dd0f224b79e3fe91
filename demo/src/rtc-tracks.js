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
// - Sampled and capture-controlled: nothing is sent that the server would discard. The stream
//   configuration (GET streamsUrl) gives each stream's sample_rate, and GET streamsUrl?blog_id=N
//   adds blog N's capture switch and sample rate (read when the tracker first sees the blog,
//   again once `captureTtlMs` old). An event is routed to its stream by name as the server routes
//   it (rtc/analytics/tracking.py `record`, tracks/streams/routing.py): it is kept when its
//   session is in the stream's sample, its blog's capture is on, and its session is in the blog's
//   sample, each sample by the very function the server uses (tracks/sampling.py
//   `props_in_sample`): FNV-1a 32-bit of "blog_id:post_id:session_id" / 2**32 < rate. What is
//   unknown (no configuration, an unreadable one) is sent: the server decides.
//
// Wire format: POST {"events": [{"event_id", "name", "ts", "props"}]}, answered by
// 202 {"accepted": n, "duplicates": n, "dropped": n, "rejected": [{"index": i, "reason": "..."}]}.

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

/** Whether the session an event's props name is in a sample of `rate` (tracks.sampling.props_in_sample). */
export const propsInSample = (props, rate) =>
  rate >= 1 || sessionInSample(props.blog_id, props.post_id, props.session_id, rate)

// How closely a stream's event list (exact names or `prefix*` patterns) names `name`: higher is
// closer, null not at all (tracks.streams.routing.Stream.specificity).
const specificity = (patterns, name) => {
  let best = null
  for (const pattern of patterns) {
    if (pattern === name) return name.length + 1 // an exact name beats every pattern
    if (pattern.endsWith('*') && name.startsWith(pattern.slice(0, -1))) best = Math.max(best ?? 0, pattern.length - 1)
  }
  return best
}

/**
 * Which of the client streams (the `streams` of GET /api/streams) takes an event name: the most
 * specific, as the server routes it; null when none does (the server will reject the event).
 */
export const streamFor = (streams, name) => {
  let chosen = null
  let rank = null
  for (const stream of Object.values(streams)) {
    const own = specificity(stream.events ?? [], name)
    if (own !== null && (rank === null || own > rank)) [chosen, rank] = [stream, own]
  }
  return chosen
}

/**
 * Whether the server would keep an event from a browser: its stream's sample, then its blog's
 * capture switch and sample (rtc.analytics.tracking.Tracking.record and .captured).
 * @param {object | null} stream  the event's client stream, null if unknown
 * @param {{enabled: boolean, sample_rate: number} | null} capture  its blog's settings, null if unknown
 * @returns {'keep' | 'sampled_out' | 'capture_off'}
 */
export const serverVerdict = (props, stream, capture) => {
  if (stream !== null && !propsInSample(props, stream.sample_rate ?? 1)) return 'sampled_out'
  if (capture === null || !Number.isInteger(props.blog_id)) return 'keep'
  if (!capture.enabled) return 'capture_off'
  return propsInSample(props, capture.sample_rate ?? 1) ? 'keep' : 'sampled_out'
}

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
// A page sends for one blog or a few: the capture settings of at most this many are kept.
const MAX_BLOGS = 64

/**
 * @param {object} [options]
 * @param {string} [options.endpoint]  where batches are POSTed
 * @param {string | null} [options.streamsUrl]  the stream configuration, and with ?blog_id= a
 *   blog's capture settings (null: no local sampling or capture control)
 * @param {number} [options.captureTtlMs]  a blog's capture settings are read again once this old
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
  captureTtlMs = 300000,
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
  /** Blog id -> {settings: {enabled, sample_rate} | null (a server without them), readAt}. */
  const captures = new Map()
  const reading = new Map() // blog id -> the Promise of its read in flight
  let closed = false
  let dropBurst = false
  const stats = { submitted: 0, sent: 0, accepted: 0, duplicates: 0, rejected: 0, dropped: 0, sampledOut: 0, captureOff: 0, retries: 0, beacons: 0, lastRejections: [] }

  // GET streamsUrl[?blog_id=]: the view, or null when it cannot be had (unknown: the server decides).
  const readView = async (blogId) => {
    const url = new URL(streamsUrl, location.href)
    if (blogId !== null) url.searchParams.set('blog_id', String(blogId))
    try {
      // Bounded: sends wait for this, and must not wait on a server that never answers.
      const response = await fetchImpl(url, { credentials: 'same-origin', signal: AbortSignal.timeout(5000) })
      return response.ok ? await response.json() : null
    } catch {
      return null
    }
  }

  const learn = (view, blogId) => {
    if (view?.streams !== undefined) streams = view.streams
    // Unreadable (the server down, say): not remembered, so the next send asks again.
    if (blogId === null || view === null) return
    captures.delete(blogId) // re-inserted last: the oldest read is the first to go
    if (captures.size >= MAX_BLOGS) captures.delete(captures.keys().next().value)
    captures.set(blogId, { settings: view?.capture ?? null, readAt: Date.now() })
  }

  const fresh = (blogId) => {
    const known = captures.get(blogId)
    return known !== undefined && Date.now() - known.readAt < captureTtlMs
  }

  // One read per blog at a time, however many events of that blog wait for it.
  const readCapture = (blogId) => {
    let pending = reading.get(blogId)
    if (pending === undefined) {
      pending = readView(blogId).then((view) => learn(view, blogId)).finally(() => reading.delete(blogId))
      reading.set(blogId, pending)
    }
    return pending
  }

  const blogOf = (entry) => (Number.isInteger(entry.event.props.blog_id) ? entry.event.props.blog_id : null)

  // Reads the capture settings of the entries' blogs that are not known, or no longer fresh.
  const knowCaptures = (entries) => {
    if (streamsUrl === null) return Promise.resolve()
    const stale = new Set(entries.map(blogOf).filter((blogId) => blogId !== null && !fresh(blogId)))
    return Promise.all([...stale].map(readCapture))
  }

  const streamsReady = streamsUrl === null ? Promise.resolve() : readView(null).then((view) => learn(view, null))

  // Drops what the server would discard, by what is known of the configuration now.
  const sampled = (entries) => entries.filter((entry) => {
    const stream = streams === null ? null : streamFor(streams, entry.event.name)
    const blogId = blogOf(entry)
    const capture = blogId === null ? null : captures.get(blogId)?.settings ?? null
    const verdict = serverVerdict(entry.event.props, stream, capture)
    if (verdict === 'keep') return true
    if (verdict === 'capture_off') stats.captureOff++
    else stats.sampledOut++
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
        await knowCaptures(queue.slice(0, batchSize))
        const entries = sampled(queue.splice(0, batchSize))
        if (entries.length > 0 && !(await post(entries, 0))) return
      }
    })().finally(() => { sending = null })
    return sending
  }

  // The page may never run code again: hand the pending events to the browser, those the server
  // would discard out (by what is known now: no time is left to ask). What the browser takes is
  // gone from here; what it refuses waits for the next chance.
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
    const entry = { stream, event }
    enqueue(entry)
    // Ask for the blog's capture settings now, so that a beacon on page hide knows them too.
    knowCaptures([entry])
    if (queue.length >= batchSize) pump()
    return event.event_id
  }

  return {
    /**
     * Queue an event; returns its event_id. `stream` is the stream the caller means (or null):
     * sampling goes by the stream that takes the event's name, as the server's routing does.
     */
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
    /** Resolves once the stream configuration was read (or could not be); blogs' capture settings come later. */
    ready: streamsReady
  }
}

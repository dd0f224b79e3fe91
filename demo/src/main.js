// The demo page: one tab = one session in one post's room.
//
// Wires the identity form, the Yjs document and its WebsocketProvider, the editor, the roster,
// the event feed and the blocked notice together. `window.rtcDemo` exposes the live objects for
// the browser tests and for poking around in the console.

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { colourOf, identityFrom, toQuery } from './identity.js'
import { bindTextarea, resolveSelection, selectionOf } from './textarea-binding.js'
import { remoteCursors } from './remote-cursors.js'
import { contributorsOf, renderRoster } from './roster.js'
import { eventFeed } from './feed.js'
import { createTracker } from './rtc-tracks.js'

// The server's "room full" close (issue 3, admission). Like every 4400-4499 close it is
// permanent: y-websocket does not retry it, and neither do we.
const BLOCKED_CODE = 4429
const isPermanent = (code) => code >= 4400 && code < 4500

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`)

const params = new URLSearchParams(location.search)
// `?server=host:port` points the page at another server (e.g. the reference y-websocket server);
// by default it talks to the server that served it.
const serverHost = params.get('server') ?? location.host
const wsBase = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${serverHost}`
const httpBase = `${location.protocol}//${serverHost}`
// The room URL's optional query parameters (issue 3): passed through as given.
const roomParams = Object.fromEntries(['token', 'post_type'].filter((key) => params.has(key)).map((key) => [key, params.get(key)]))
// A server with --secret answers reads (roster, feed, client events) only with the room token.
const token = params.get('token')
const tokenQuery = token === null ? '' : `token=${encodeURIComponent(token)}`
const readHeaders = token === null ? {} : { Authorization: `Bearer ${token}` }

const ui = {
  form: $('identity-form'),
  room: $('room'),
  sessionId: $('session-id'),
  node: $('node'),
  status: $('status'),
  closeInfo: $('close-info'),
  editor: $('editor'),
  backdrop: document.querySelector('.editor-backdrop'),
  roster: $('roster'),
  serverRoster: $('server-roster'),
  feed: $('feed'),
  feedStatus: $('feed-status'),
  blocked: $('blocked-notice'),
  blockedText: $('blocked-text'),
  tryAgain: $('try-again')
}

const cursors = remoteCursors(ui.editor, ui.backdrop)
// What only this tab can see (a socket the server never saw) goes to POST /api/events.
// `?flush_ms=` shortens the periodic send (the browser tests use it).
const tracker = createTracker({
  endpoint: `${httpBase}/api/events${tokenQuery === '' ? '' : `?${tokenQuery}`}`,
  streamsUrl: `${httpBase}/api/streams`,
  flushIntervalMs: Number(params.get('flush_ms') ?? 5000)
})
const debug = { closes: [], statuses: [], identity: null, doc: null, provider: null, tracker }
window.rtcDemo = debug

let session = null // {doc, provider, identity, teardown}

const setStatus = (state, detail = '') => {
  ui.status.dataset.state = state
  ui.status.textContent = detail === '' ? state : `${state} ${detail}`
  debug.statuses.push(ui.status.textContent)
}

const refreshServerRoster = async (identity) => {
  try {
    const response = await fetch(`${httpBase}/api/rooms/${identity.blog}/${identity.post}`, { headers: readHeaders })
    if (!response.ok) throw new Error(String(response.status))
    const room = await response.json()
    if (session?.identity !== identity) return
    ui.serverRoster.textContent =
      `server (GET /api/rooms/${identity.blog}/${identity.post}): ${room.contributor_count} contributor${room.contributor_count === 1 ? '' : 's'}, ` +
      `${room.session_count} session${room.session_count === 1 ? '' : 's'}`
    showNode(room, session.doc.clientID)
    return room
  } catch {
    ui.serverRoster.textContent = 'server roster unavailable'
    return null
  }
}

// In cluster mode the roster names the node that serves each session: this tab's is found by
// its session id (the Yjs clientID), whichever node answered the HTTP request (a load
// balancer may send it to another one than the WebSocket's).
const showNode = (room, ownSessionId) => {
  const own = room.contributors.flatMap((c) => c.sessions).find((s) => s.session_id === ownSessionId)
  ui.node.hidden = own?.node == null
  ui.node.textContent = own?.node == null ? '' : `served by node ${own.node}`
  ui.node.dataset.node = own?.node ?? ''
}

const showBlocked = async (identity, { code, reason }) => {
  ui.blocked.hidden = false
  // Edits made now would stay in this tab only: nothing is sent until we are admitted.
  ui.editor.readOnly = true
  if (code !== BLOCKED_CODE) {
    // Refused for another reason (a bad or expired token, a kick): say which, offer a retry.
    ui.blockedText.textContent = `The server closed this tab's connection for good: ${code} ${reason}.`
    return
  }
  ui.blockedText.textContent = 'This post is full.'
  const room = await refreshServerRoster(identity)
  if (room && session?.identity === identity) {
    const count = room.contributor_count
    ui.blockedText.textContent = `This post already has ${count} ${count === 1 ? 'person' : 'people'} editing.`
  }
}

const start = (identity) => {
  const doc = new Y.Doc()
  const ytext = doc.getText('content')
  const colour = colourOf(identity.user)
  // disableBc: tabs of one browser must not sync behind the server's back (BroadcastChannel),
  // or the two-tab test would prove nothing about the server.
  const provider = new WebsocketProvider(`${wsBase}/rooms`, `${identity.blog}/${identity.post}`, doc, {
    connect: false,
    disableBc: true,
    params: roomParams
  })
  // The server admits a connection on its first awareness update, which names the session and
  // the user (the Gutenberg `collaboratorInfo` convention), so it must be set before connecting.
  provider.awareness.setLocalState({
    collaboratorInfo: { id: identity.user, name: identity.name, enteredAt: Date.now() },
    user: { name: identity.name, color: colour }
  })
  session = { doc, provider, identity }
  Object.assign(debug, { doc, provider, identity, closes: [], statuses: [] })

  ui.room.textContent = `blog ${identity.blog} · post ${identity.post}`
  ui.sessionId.textContent = String(doc.clientID)
  ui.blocked.hidden = true
  ui.editor.readOnly = false
  ui.closeInfo.textContent = ''
  ui.serverRoster.textContent = ''
  ui.node.hidden = true
  ui.node.dataset.node = ''
  document.title = `${identity.name} · post ${identity.post} · rtc demo`
  document.documentElement.style.setProperty('--own-colour', colour)

  const unbind = bindTextarea(ytext, ui.editor)

  const drawCursors = () => {
    const remote = []
    for (const [clientId, state] of provider.awareness.getStates()) {
      if (clientId === doc.clientID) continue
      const selection = resolveSelection(doc, state.cursor)
      if (selection === null) continue
      remote.push({ ...selection, colour: state.user?.color ?? '#777', name: state.user?.name ?? '' })
    }
    cursors.draw(remote)
  }
  ytext.observe(drawCursors)

  const publishCursor = () => {
    if (document.activeElement === ui.editor) {
      provider.awareness.setLocalStateField('cursor', selectionOf(ytext, ui.editor))
    }
  }
  document.addEventListener('selectionchange', publishCursor)
  ui.editor.addEventListener('input', publishCursor)

  let rosterTimer = null
  const onAwareness = () => {
    renderRoster(ui.roster, contributorsOf(provider.awareness.getStates()), doc.clientID)
    drawCursors()
    // The server's own view, to compare with ours; coalesced, awareness changes come in bursts.
    clearTimeout(rosterTimer)
    rosterTimer = setTimeout(() => refreshServerRoster(identity), 150)
  }
  provider.awareness.on('change', onAwareness)
  onAwareness()

  provider.on('status', ({ status }) => {
    if (status === 'connected' || status === 'connecting') setStatus(status)
  })
  // A socket that failed before the first sync may never have reached the server (DNS, TLS, a
  // proxy refusing the upgrade), so the server may have no event for it: report it from here,
  // with the session id the server would use. Once per outage, not once per reconnect attempt.
  let synced = false // this connection reached sync step 2
  let opened = false
  let errored = false
  let outageReported = false
  provider.on('status', ({ status }) => {
    if (status === 'connecting') {
      synced = false
      opened = false
      errored = false
    }
    if (status === 'connected') opened = true
  })
  provider.on('sync', (isSynced) => {
    if (!isSynced) return
    synced = true
    outageReported = false
  })
  provider.on('connection-error', () => { errored = true })
  const reportClientSideError = (closeCode) => {
    if (outageReported) return
    outageReported = true
    tracker.connectionError({
      blog_id: identity.blog,
      post_id: identity.post,
      session_id: doc.clientID,
      wp_user_id: identity.user,
      error_code: opened ? 'abnormal-closure' : 'connect-failed',
      close_code: closeCode
    })
  }
  provider.on('sync', (synced) => { if (synced) setStatus('synced') })
  provider.on('connection-close', (event) => {
    if (event === null) return // closed by us: disconnect(), reconnect, or y-websocket's watchdog
    if (!synced && (errored || event.code === 1006)) reportClientSideError(event.code)
    const reason = String(event.reason ?? '')
    debug.closes.push({ code: event.code, reason })
    ui.closeInfo.textContent = `last close: ${event.code}${reason === '' ? '' : ` ${reason}`} at ${new Date().toLocaleTimeString()}`
    setStatus('closed', `${event.code}${reason === '' ? '' : ` ${reason}`}`)
    if (isPermanent(event.code)) {
      // y-websocket 3.x already stops on 44xx; older ones loop. Never retry by ourselves.
      provider.shouldConnect = false
      showBlocked(identity, { code: event.code, reason })
    }
  })

  session.teardown = () => {
    clearTimeout(rosterTimer)
    document.removeEventListener('selectionchange', publishCursor)
    ui.editor.removeEventListener('input', publishCursor)
    unbind()
    provider.destroy()
    doc.destroy()
  }

  feed.open(`${wsBase}/events?blog_id=${identity.blog}&post_id=${identity.post}${tokenQuery === '' ? '' : `&${tokenQuery}`}`)
  setStatus('connecting')
  provider.connect()
}

const feed = eventFeed(ui.feed, {
  onStatus: (status) => { ui.feedStatus.textContent = status },
  onEvent: (event) => {
    if (session !== null && /_(join|leave|blocked)$/.test(event.name)) refreshServerRoster(session.identity)
  }
})

// The address bar keeps the page's own options (server, token, post_type) across a room change.
const addressOf = (identity) => {
  const query = new URLSearchParams(toQuery(identity))
  for (const key of ['server', 'token', 'post_type']) if (params.has(key)) query.set(key, params.get(key))
  return `?${query}`
}

const fillForm = (identity) => {
  for (const key of ['blog', 'post', 'user', 'name']) ui.form.elements[key].value = String(identity[key])
}

ui.form.addEventListener('submit', (event) => {
  event.preventDefault()
  const identity = identityFrom(new URLSearchParams(new FormData(ui.form)))
  history.replaceState(null, '', addressOf(identity))
  fillForm(identity)
  session?.teardown()
  start(identity)
})

ui.tryAgain.addEventListener('click', () => {
  ui.blocked.hidden = true
  ui.editor.readOnly = false
  setStatus('connecting')
  session?.provider.connect()
})

const initial = identityFrom(params)
if (!params.has('user')) {
  // Put the made-up user in the address bar: a reload keeps this tab's user (and gets a new
  // session), and the URL can be pasted into another tab to be the same user twice.
  history.replaceState(null, '', addressOf(initial))
}
fillForm(initial)
start(initial)

// Real yjs + y-websocket clients, driven over stdin/stdout by tests/jsclient.py.
//
// Requests, one JSON object a line:   {"id": 1, "cmd": "open", ...args}
// Responses, one a line:              {"id": 1, "ok": true, "result": {...}} or {"id": 1, "ok": false, "error": "..."}
// Notifications (no id), one a line:  {"event": "status"|"synced"|"update"|"awareness"|"close"|"closed", "name": ..., ...}
//
// Every client is a fresh Y.Doc and an unmodified WebsocketProvider over the `ws` package,
// with disableBc so two providers in this one process cannot sync behind the server's back.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import readline from 'node:readline'

// y-websocket must not write to stdout: it carries our protocol.
console.log = console.error
console.info = console.error
// Each provider adds a process 'exit' listener.
process.setMaxListeners(0)

/** @type {Map<string, {doc: Y.Doc, provider: WebsocketProvider, closes: Array<object>, receivedRemote: boolean, remoteAwarenessUpdates: number}>} */
const clients = new Map()

const emit = (message) => process.stdout.write(JSON.stringify(message) + '\n')

const states = (awareness) => Object.fromEntries(awareness.getStates())

const get = (name) => {
  const client = clients.get(name)
  if (client === undefined) throw new Error(`no client named ${JSON.stringify(name)}`)
  return client
}

const summary = (name, client) => ({
  clientID: client.doc.clientID,
  status: client.provider.wsconnected ? 'connected' : client.provider.wsconnecting ? 'connecting' : 'disconnected',
  synced: client.provider.synced,
  shouldConnect: client.provider.shouldConnect,
  text: client.doc.getText('content').toString(),
  closes: client.closes,
  receivedRemote: client.receivedRemote,
  remoteAwarenessUpdates: client.remoteAwarenessUpdates
})

const commands = {
  ping: () => ({ pong: true }),

  open ({ name, url, room, user = null, connect = true, params = {} }) {
    if (clients.has(name)) throw new Error(`client ${name} already exists`)
    const doc = new Y.Doc()
    const provider = new WebsocketProvider(url, room, doc, {
      WebSocketPolyfill: WebSocket,
      disableBc: true,
      connect: false,
      params
    })
    const client = { doc, provider, closes: [], receivedRemote: false, remoteAwarenessUpdates: 0 }
    clients.set(name, client)
    if (user !== null) {
      // The Gutenberg convention the server reads its roster from.
      provider.awareness.setLocalState({
        collaboratorInfo: { id: user.id, name: user.name, enteredAt: Date.now() }
      })
    }
    provider.on('status', ({ status }) => emit({ event: 'status', name, status }))
    provider.on('sync', (synced) => emit({ event: 'synced', name, synced }))
    provider.on('connection-close', (event) => {
      // event is null when the provider closed the socket itself (disconnect(), watchdog).
      const close = event === null
        ? { code: null, reason: null, local: true }
        : { code: event.code, reason: String(event.reason ?? ''), local: false }
      client.closes.push(close)
      emit({ event: 'close', name, ...close })
    })
    // Emitted when a 4400-4499 close made the provider give up reconnecting.
    provider.on('closed', ({ code, reason }) => emit({ event: 'closed', name, code, reason }))
    doc.on('update', (_update, origin) => {
      const remote = origin === provider
      if (remote) client.receivedRemote = true
      emit({ event: 'update', name, remote, text: doc.getText('content').toString() })
    })
    provider.awareness.on('update', (_changes, origin) => {
      if (origin === provider) client.remoteAwarenessUpdates++
    })
    provider.awareness.on('change', () => emit({ event: 'awareness', name, states: states(provider.awareness) }))
    if (connect) provider.connect()
    return { clientID: doc.clientID }
  },

  status: ({ name }) => summary(name, get(name)),

  insert ({ name, index, text }) {
    const ytext = get(name).doc.getText('content')
    ytext.insert(index, text)
    return { text: ytext.toString() }
  },

  text: ({ name }) => ({ text: get(name).doc.getText('content').toString() }),

  setAwareness ({ name, state }) {
    get(name).provider.awareness.setLocalState(state)
    return {}
  },

  setAwarenessField ({ name, field, value }) {
    get(name).provider.awareness.setLocalStateField(field, value)
    return {}
  },

  awareness: ({ name }) => ({ states: states(get(name).provider.awareness) }),

  // Drop the TCP connection without a close frame, like a killed tab or a lost network.
  // With reconnect=false the provider stays down (a tab that is gone); otherwise it
  // reconnects with its usual backoff (a network blip).
  terminate ({ name, reconnect = false }) {
    const { provider } = get(name)
    if (provider.ws === null) throw new Error(`client ${name} has no socket`)
    if (!reconnect) provider.shouldConnect = false
    provider.ws.terminate()
    return {}
  },

  disconnect ({ name }) {
    get(name).provider.disconnect()
    return {}
  },

  // Reconnect the same Y.Doc (same clientID) after disconnect, terminate or a 44xx close.
  connect ({ name }) {
    get(name).provider.connect()
    return {}
  },

  destroy ({ name }) {
    const { provider, doc } = get(name)
    provider.destroy()
    doc.destroy()
    clients.delete(name)
    return {}
  }
}

const handle = (line) => {
  let request
  try {
    request = JSON.parse(line)
  } catch (error) {
    emit({ id: null, ok: false, error: `bad JSON: ${error.message}` })
    return
  }
  const { id, cmd, ...args } = request
  try {
    const command = commands[cmd]
    if (command === undefined) throw new Error(`unknown command ${JSON.stringify(cmd)}`)
    emit({ id, ok: true, result: command(args) })
  } catch (error) {
    emit({ id, ok: false, error: String(error?.message ?? error) })
  }
}

readline.createInterface({ input: process.stdin }).on('line', handle)
// The parent closing our stdin is the signal to go, sockets and all.
process.stdin.on('end', () => process.exit(0))

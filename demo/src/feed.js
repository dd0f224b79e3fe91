// The live event feed of one room: the server's `/events` WebSocket pushes the room's recent
// events (oldest first) and then each new one as it is recorded. Shown newest first.

const MAX_ITEMS = 200
const MAX_BACKOFF_MS = 5000

const describe = (value) => (typeof value === 'object' && value !== null ? JSON.stringify(value) : String(value))

const renderEvent = (event) => {
  const item = document.createElement('li')
  item.className = `event event-${event.name.replace(/^.*_rtc_/, '')}`
  item.dataset.testid = 'feed-item'
  item.dataset.name = event.name
  const props = event.props ?? {}
  if (props.session_id !== undefined) item.dataset.sessionId = String(props.session_id)

  const head = document.createElement('div')
  head.className = 'event-head'
  const name = document.createElement('strong')
  name.textContent = event.name
  const time = document.createElement('time')
  time.className = 'muted'
  time.textContent = new Date(event.ts).toLocaleTimeString()
  head.append(name, ' ', time)

  const body = document.createElement('dl')
  for (const [key, value] of Object.entries(props)) {
    if (key === 'blog_id' || key === 'post_id') continue // the room is in the page header
    const term = document.createElement('dt')
    term.textContent = key
    const definition = document.createElement('dd')
    definition.textContent = describe(value)
    body.append(term, definition)
  }
  item.append(head, body)
  return item
}

/**
 * @param {HTMLElement} list  the feed's <ol>
 * @param {{onEvent?: (event: object) => void, onStatus?: (status: string) => void}} hooks
 * @returns {{open: (url: string) => void, close: () => void}}
 */
export const eventFeed = (list, { onEvent = () => {}, onStatus = () => {} } = {}) => {
  let socket = null
  let retry = null
  let seen = new Set()

  const close = () => {
    clearTimeout(retry)
    if (socket !== null) {
      const old = socket
      socket = null
      old.onclose = null
      old.close(1000)
    }
  }

  const open = (url, attempt = 0, fresh = true) => {
    close()
    if (fresh) {
      seen = new Set()
      list.replaceChildren()
    }
    const current = new WebSocket(url)
    socket = current
    onStatus('connecting')
    current.onopen = () => { attempt = 0; onStatus('live') }
    current.onmessage = ({ data }) => {
      let event
      try { event = JSON.parse(data) } catch { return }
      // After a reconnect the server replays recent events: keep each one once.
      if (event.event_id !== undefined) {
        if (seen.has(event.event_id)) return
        seen.add(event.event_id)
      }
      list.prepend(renderEvent(event))
      while (list.childElementCount > MAX_ITEMS) list.lastElementChild.remove()
      onEvent(event)
    }
    current.onclose = ({ code }) => {
      if (socket !== current) return
      socket = null
      onStatus(`closed (${code}), retrying`)
      retry = setTimeout(() => open(url, attempt + 1, false), Math.min(MAX_BACKOFF_MS, 250 * 2 ** attempt))
    }
  }

  return { open, close }
}

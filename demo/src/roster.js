// The live roster: awareness states grouped by WordPress user, each user with their sessions.

/**
 * Groups awareness states the way the server counts contributors: by `collaboratorInfo.id`.
 *
 * @param {Map<number, any>} states  awareness.getStates(): clientID -> state
 * @returns {Array<{id: number, name: string, colour: string, sessions: Array<{sessionId: number, enteredAt: number|null}>}>}
 */
export const contributorsOf = (states) => {
  const users = new Map()
  for (const [sessionId, state] of states) {
    const info = state?.collaboratorInfo
    if (info == null || info.id == null) continue
    let user = users.get(info.id)
    if (user === undefined) {
      user = { id: info.id, name: info.name ?? '', colour: state.user?.color ?? '#777', sessions: [] }
      users.set(info.id, user)
    }
    user.sessions.push({ sessionId, enteredAt: info.enteredAt ?? null })
  }
  const list = [...users.values()]
  for (const user of list) user.sessions.sort((a, b) => a.sessionId - b.sessionId)
  return list.sort((a, b) => a.id - b.id)
}

const element = (tag, attributes = {}, ...children) => {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(attributes)) {
    if (key.startsWith('data-')) node.setAttribute(key, value)
    else if (key === 'style') node.style.cssText = value
    else node[key] = value
  }
  node.append(...children)
  return node
}

/**
 * @param {HTMLElement} list  the roster's <ul>
 * @param {ReturnType<typeof contributorsOf>} contributors
 * @param {number} ownSessionId
 */
export const renderRoster = (list, contributors, ownSessionId) => {
  list.replaceChildren(...contributors.map((user) => element('li',
    { className: 'contributor', 'data-testid': 'contributor', 'data-user-id': String(user.id) },
    element('span', { className: 'swatch', style: `background:${user.colour}` }),
    element('span', { className: 'contributor-name' }, user.name),
    element('span', { className: 'muted' }, ` user ${user.id}`),
    element('ul', { className: 'sessions' }, ...user.sessions.map(({ sessionId, enteredAt }) => element('li',
      { 'data-testid': 'roster-session', 'data-session-id': String(sessionId) },
      element('code', {}, String(sessionId)),
      enteredAt === null ? '' : element('span', { className: 'muted' }, ` since ${new Date(enteredAt).toLocaleTimeString()}`),
      sessionId === ownSessionId ? element('span', { className: 'you' }, 'you') : ''
    )))
  )))
}

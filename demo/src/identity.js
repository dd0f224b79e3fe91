// Who this tab is and which room it edits: read from the query string, else made up per tab.
// No DOM and no network here.

const NAMES = ['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Margaret', 'Ken', 'Radia', 'Linus']

/** A positive integer from a query-string value, or null. Room and user ids are WordPress ids. */
export const positiveInt = (value) => {
  if (value === null || !/^[1-9][0-9]{0,15}$/.test(value.trim())) return null
  return Number.parseInt(value, 10)
}

/**
 * @param {URLSearchParams} params
 * @param {() => number} random  Math.random, injectable
 * @returns {{blog: number, post: number, user: number, name: string}}
 */
export const identityFrom = (params, random = Math.random) => {
  const user = positiveInt(params.get('user')) ?? 1000 + Math.floor(random() * 9000)
  const name = (params.get('name') ?? '').trim() || `${NAMES[user % NAMES.length]} ${user}`
  return {
    blog: positiveInt(params.get('blog')) ?? 1,
    post: positiveInt(params.get('post')) ?? 1,
    user,
    name
  }
}

/** The query string that reproduces an identity, so a reload keeps the same user and room. */
export const toQuery = ({ blog, post, user, name }) =>
  new URLSearchParams({ blog: String(blog), post: String(post), user: String(user), name }).toString()

/** A stable colour per user id: every tab of one user shows the same colour everywhere. */
export const colourOf = (userId) => {
  // Golden-angle hue steps keep consecutive ids far apart on the wheel.
  const hue = Math.round((Number(userId) * 137.508) % 360)
  return `hsl(${hue} 65% 42%)`
}

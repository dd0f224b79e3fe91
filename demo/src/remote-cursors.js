// Draws other sessions' carets and selections behind a transparent <textarea>.
//
// A textarea cannot style ranges of its own text, so a "backdrop" element with the same font,
// padding and wrapping holds an invisible copy of the text with coloured marks at the remote
// positions; it scrolls with the textarea.

/**
 * @param {string} text
 * @param {Array<{anchor: number, head: number, colour: string, name: string}>} cursors
 * @returns {DocumentFragment}
 */
export const renderBackdrop = (text, cursors) => {
  const fragment = document.createDocumentFragment()
  const clamp = (offset) => Math.max(0, Math.min(text.length, offset))
  const marks = cursors.map((cursor) => ({
    ...cursor,
    from: clamp(Math.min(cursor.anchor, cursor.head)),
    to: clamp(Math.max(cursor.anchor, cursor.head)),
    caret: clamp(cursor.head)
  }))
  const boundaries = [...new Set([0, text.length, ...marks.flatMap((m) => [m.from, m.to, m.caret])])]
    .sort((a, b) => a - b)
  for (let i = 0; i < boundaries.length; i++) {
    const at = boundaries[i]
    for (const mark of marks.filter((m) => m.caret === at)) {
      const caret = document.createElement('span')
      caret.className = 'remote-caret'
      caret.style.setProperty('--colour', mark.colour)
      caret.dataset.name = mark.name
      fragment.append(caret)
    }
    const next = boundaries[i + 1]
    if (next === undefined) break
    const chunk = text.slice(at, next)
    const cover = marks.find((m) => m.from <= at && next <= m.to)
    if (cover === undefined) {
      fragment.append(chunk)
    } else {
      const selection = document.createElement('span')
      selection.className = 'remote-selection'
      selection.style.setProperty('--colour', cover.colour)
      selection.textContent = chunk
      fragment.append(selection)
    }
  }
  // A trailing newline only makes a visible line when something follows it.
  fragment.append('\u200b')
  return fragment
}

/**
 * @param {HTMLTextAreaElement} textarea
 * @param {HTMLElement} backdrop
 * @returns {{draw: (cursors: Array<{anchor: number, head: number, colour: string, name: string}>) => void}}
 */
export const remoteCursors = (textarea, backdrop) => {
  let last = []
  const follow = () => {
    backdrop.scrollTop = textarea.scrollTop
    backdrop.scrollLeft = textarea.scrollLeft
  }
  textarea.addEventListener('scroll', follow)
  return {
    draw (cursors = last) {
      last = cursors
      backdrop.replaceChildren(renderBackdrop(textarea.value, cursors))
      follow()
    }
  }
}

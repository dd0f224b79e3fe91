// Binds a <textarea> to a Y.Text: local input becomes the smallest Y.Text diff, remote changes
// are applied to the textarea with the caret and selection moved through the change.

import * as Y from 'yjs'

/** Where `before` and `after` differ: one contiguous replaced range (prefix/suffix trim). */
export const diff = (before, after) => {
  let start = 0
  const shortest = Math.min(before.length, after.length)
  while (start < shortest && before[start] === after[start]) start++
  let end = 0
  while (
    end < shortest - start &&
    before[before.length - 1 - end] === after[after.length - 1 - end]
  ) end++
  return {
    index: start,
    remove: before.length - start - end,
    insert: after.slice(start, after.length - end)
  }
}

/** Moves an offset through a Y.Text delta, the way a caret should move under a remote edit. */
export const transformOffset = (offset, delta) => {
  let cursor = 0 // position in the old text
  let moved = offset
  for (const op of delta) {
    if (cursor > offset) break
    if (op.retain !== undefined) {
      cursor += op.retain
    } else if (op.insert !== undefined) {
      const length = typeof op.insert === 'string' ? op.insert.length : 1
      // Text typed exactly at our caret goes before it only if it is strictly before.
      if (cursor < offset) moved += length
      // Inserted text does not consume old text: cursor stays.
    } else if (op.delete !== undefined) {
      const deleted = Math.min(op.delete, Math.max(0, offset - cursor))
      moved -= deleted
      cursor += op.delete
    }
  }
  return moved
}

/**
 * @param {Y.Text} ytext
 * @param {HTMLTextAreaElement} textarea
 * @returns {() => void} unbind
 */
export const bindTextarea = (ytext, textarea) => {
  const origin = Symbol('textarea')
  textarea.value = ytext.toString()

  const onInput = () => {
    const { index, remove, insert } = diff(ytext.toString(), textarea.value)
    if (remove === 0 && insert === '') return
    ytext.doc.transact(() => {
      if (remove > 0) ytext.delete(index, remove)
      if (insert !== '') ytext.insert(index, insert)
    }, origin)
  }

  const onChange = (event, transaction) => {
    if (transaction.origin === origin) return
    const focused = document.activeElement === textarea
    const { selectionStart, selectionEnd, selectionDirection, scrollTop } = textarea
    textarea.value = ytext.toString()
    if (focused) {
      textarea.setSelectionRange(
        transformOffset(selectionStart, event.delta),
        transformOffset(selectionEnd, event.delta),
        selectionDirection
      )
    }
    textarea.scrollTop = scrollTop
  }

  textarea.addEventListener('input', onInput)
  ytext.observe(onChange)
  return () => {
    textarea.removeEventListener('input', onInput)
    ytext.unobserve(onChange)
  }
}

/** This tab's selection as relative positions, which survive concurrent edits (for awareness). */
export const selectionOf = (ytext, textarea) => ({
  anchor: Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(ytext, textarea.selectionStart)),
  head: Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(ytext, textarea.selectionEnd))
})

/** A remote selection back to absolute offsets in the current text, or null if unresolvable. */
export const resolveSelection = (doc, cursor) => {
  if (cursor == null || cursor.anchor == null || cursor.head == null) return null
  const anchor = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(cursor.anchor), doc)
  const head = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(cursor.head), doc)
  if (anchor === null || head === null) return null
  return { anchor: anchor.index, head: head.index }
}

"""What a Yjs document keeps for every client that ever wrote to it, though its text stays
bounded: in yrs (this server's documents, through pycrdt) and in Yjs (the Node reference
server's). A script, not a test.

    .venv/bin/python bench/crdt_history.py                 # 10 documents x 300 clients
    .venv/bin/python bench/crdt_history.py --clients 1000 --edits 20

Each document gets `--clients` writers in turn, each a new Yjs client (a new tab: a new
Y.Doc, a new clientID) that makes `--edits` edits, every one replacing its previous insert,
and deletes its last insert before it goes (as `bench/soak.py --bounded` does): the text ends
empty. Printed per writing client: the document's memory (malloc's bytes in use for yrs,
V8's heap after a full collection for Yjs), the same document rebuilt from its own update,
and its update's size. Then the same number of edits by a fixed set of clients (each
reconnecting, as `--reconnect` does in the soak): what a loaded document grows by per edit
when its writers do not change. This is the growth `bench/soak.py` sees in rooms that stay
loaded while new sessions write; it goes when a room unloads.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text

BENCH = Path(__file__).resolve().parent

_NODE = r"""
import * as Y from "yjs";
const [rooms, clients, edits, fixed] = JSON.parse(process.argv[1]);
const used = () => { global.gc(); global.gc(); return process.memoryUsage().heapUsed; };
function write(server, client, text, mine, insert) {
  const before = Y.encodeStateVector(client);
  client.transact(() => {
    if (mine.length) {
      const previous = mine.pop(), at = text.toString().indexOf(previous);
      if (at >= 0) text.delete(at, previous.length);
    }
    if (insert !== null) { text.insert(0, insert); mine.push(insert); }
  });
  Y.applyUpdate(server, Y.encodeStateAsUpdate(client, before));
}
function fill(writers) {
  const docs = [];
  let id = 1000;
  for (let r = 0; r < rooms; r++) {
    const server = new Y.Doc(); server.getText("content"); docs.push(server);
    const pool = Array.from({ length: writers }, () => {
      const doc = new Y.Doc(); doc.clientID = ++id;
      return { doc, text: doc.getText("content"), mine: [] };
    });
    for (let c = 0; c < clients; c++) {
      const w = pool[c % writers];
      for (let e = 0; e < edits; e++) {
        write(server, w.doc, w.text, w.mine, `${w.doc.clientID}:${e} `);
      }
      write(server, w.doc, w.text, w.mine, null);
    }
  }
  return docs;
}
const out = {};
for (const [name, writers] of [["new", clients], ["fixed", fixed]]) {
  const base = used();
  let docs = fill(writers);
  out[name] = (used() - base) / rooms / clients;
  if (name === "new") {
    const before = used();
    const rebuilt = docs.map((d) => {
      const fresh = new Y.Doc();
      Y.applyUpdate(fresh, Y.encodeStateAsUpdate(d));
      return fresh;
    });
    out.rebuilt = (used() - before) / rooms / clients;
    out.update = docs.reduce((s, d) => s + Y.encodeStateAsUpdate(d).length, 0) / rooms / clients;
    rebuilt.length = 0;
  }
  docs = null;
}
console.log(JSON.stringify(out));
"""


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def _in_use() -> int:
    gc.collect()
    return int(_libc.mallinfo2().uordblks)


def _write(server: Doc[Any], client: Doc[Any], mine: list[str], insert: str | None) -> None:
    text = client.get("content", type=Text)
    before = client.get_state()
    with client.transaction():
        if mine:
            previous = mine.pop()
            at = str(text).find(previous)
            if at >= 0:
                del text[at : at + len(previous)]
        if insert is not None:
            text.insert(0, insert)
            mine.append(insert)
    server.apply_update(client.get_update(before))


def _fill(rooms: int, clients: int, edits: int, writers: int) -> list[Doc[Any]]:
    """`rooms` documents, each written by `clients` sessions of `writers` Yjs clients."""
    docs: list[Doc[Any]] = []
    ids = iter(range(1001, 10**9))
    for _ in range(rooms):
        server: Doc[Any] = Doc()
        server.get("content", type=Text)
        docs.append(server)
        pool: list[tuple[Doc[Any], list[str]]] = [
            (Doc(client_id=next(ids)), []) for _ in range(writers)
        ]
        for session in range(clients):
            client, mine = pool[session % writers]
            for edit in range(edits):
                _write(server, client, mine, f"{client.client_id}:{edit} ")
            _write(server, client, mine, None)
        assert str(server.get("content", type=Text)) == ""
    return docs


def yrs(rooms: int, clients: int, edits: int, fixed: int) -> dict[str, float]:
    per = rooms * clients
    out: dict[str, float] = {}
    base = _in_use()
    docs = _fill(rooms, clients, edits, clients)
    out["new"] = (_in_use() - base) / per
    before = _in_use()
    rebuilt = []
    for doc in docs:
        fresh: Doc[Any] = Doc()
        fresh.apply_update(doc.get_update())
        rebuilt.append(fresh)
    out["rebuilt"] = (_in_use() - before) / per
    out["update"] = sum(len(doc.get_update()) for doc in docs) / per
    del docs, rebuilt
    base = _in_use()
    kept = _fill(rooms, clients, edits, fixed)
    out["fixed"] = (_in_use() - base) / per
    del kept
    return out


def yjs(rooms: int, clients: int, edits: int, fixed: int) -> dict[str, float] | None:
    if not (BENCH / "node_modules" / "yjs").exists():
        return None  # `make bench/node_modules/.installed` first
    done = subprocess.run(
        ["node", "--expose-gc", "--input-type=module", "-e", _NODE,
         json.dumps([rooms, clients, edits, fixed])],
        cwd=BENCH, capture_output=True, text=True, timeout=600, check=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--clients", type=int, default=300, help="writing sessions per document")
    parser.add_argument("--edits", type=int, default=8, help="edits per session")
    parser.add_argument("--fixed", type=int, default=10,
                        help="Yjs clients that make the same sessions in the second run")
    args = parser.parse_args()
    shape = (args.rooms, args.clients, args.edits, args.fixed)
    print(f"{args.rooms} documents x {args.clients} writing sessions x {args.edits} edits; "
          "bytes per session")
    print(f"{'':28} {'yrs':>8} {'Yjs':>8}")
    ours, theirs = yrs(*shape), yjs(*shape)
    rows = [("new client each session", "new"), ("  rebuilt from its update", "rebuilt"),
            ("  its update", "update"), (f"{args.fixed} clients reconnecting", "fixed")]
    for label, key in rows:
        node = f"{theirs[key]:8.0f}" if theirs is not None else f"{'-':>8}"
        print(f"{label:28} {ours[key]:8.0f} {node}")


if __name__ == "__main__":
    main()

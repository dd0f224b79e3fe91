-- A connection of this node ended: remove its registration, if it still holds one.
--
-- KEYS: the room's sessions, contributors, ends, ends_at, blocked, log.
-- ARGV: prefix, room ("blog:post"), node, conn, session id, end json, ended at ms, ends
--   memory ms, history cap, room key ttl ms.
-- Reply: 'left' (removed, end recorded), 'replaced' (another connection took the session
--   over: its entry in this node's `replaced` hash is removed) or 'gone' (reaped already).

local prefix, room, node = ARGV[1], ARGV[2], ARGV[3]
local conn, sid, end_json = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local ended_at, ends_memory = tonumber(ARGV[7]), tonumber(ARGV[8])
local cap, ttl = tonumber(ARGV[9]), ARGV[10]
local R = given_room(room)
local member = room .. ':' .. sid

local held = redis.call('HGET', R.sessions, sid)
if held then
  local holder = cjson.decode(held)
  if holder.node == node and holder.conn == conn then
    remove_session(prefix, R, node, sid, holder.ukey)
    record_end(R, sid, end_json, ended_at, ended_at, ends_memory, cap, ttl)
    return 'left'
  end
end

local replaced_key = node_key(prefix, node, 'replaced')
local replaced = redis.call('HGET', replaced_key, member)
if replaced and cjson.decode(replaced).conn == conn then
  redis.call('HDEL', replaced_key, member)
  return 'replaced'
end
return 'gone'

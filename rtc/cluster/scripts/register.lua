-- (Re)write this node's registrations as they are locally, after Redis came back (or came
-- back empty). No limit applies: occupants are never evicted. A session registered to
-- another node meanwhile (taken over) is left to it. Registrations naming this node that
-- are not given (their connections ended while Redis was away) are dropped, with a `gone`
-- entry in their room's log so that other nodes remove their presence.
--
-- KEYS: none (node-wide; see common.lua).
-- ARGV: prefix, node, room key ttl ms, log max length, then per session: room
--   ("blog:post"), session id, registration json, contributor key.
-- Reply: the number of registrations dropped.

local prefix, node, ttl, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local given = {}

for i = 5, #ARGV, 4 do
  local room, sid, json, ukey = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local R = room_keys(prefix, room)
  given[room .. ':' .. sid] = true
  local held = redis.call('HGET', R.sessions, sid)
  local take = true
  if held then
    local holder = cjson.decode(held)
    if holder.node == node then
      remove_session(prefix, R, node, sid, holder.ukey)
    else
      take = false
    end
  end
  if take then
    add_session(prefix, R, node, sid, json, ukey)
  end
end

local index = node_key(prefix, node, 'sessions')
local dropped = 0
for _, member in ipairs(redis.call('SMEMBERS', index)) do
  if not given[member] then
    local room, sid = split_member(member)
    if room then
      local R = room_keys(prefix, room)
      local held = redis.call('HGET', R.sessions, sid)
      if held and cjson.decode(held).node == node then
        remove_session(prefix, R, node, sid, cjson.decode(held).ukey)
        log_add(R, maxlen, ttl, 'n', node, 'k', 'gone', 'd', sid)
        dropped = dropped + 1
      end
    end
    redis.call('SREM', index, member)
  end
end
return dropped

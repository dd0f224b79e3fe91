-- Reap every node whose last heartbeat is older than the node timeout (Redis's clock).
--
-- ZREM claims a dead node: whichever reaper removes it from the node list is the only one
-- that reaps it. Its registrations that still name it are removed (ends recorded
-- abnormal, a `gone` entry in each room's log); those taken over by another node are left
-- alone. Its `replaced` hash is emptied: those connections lost their session earlier.
--
-- KEYS: none (node-wide; see common.lua).
-- ARGV: prefix, reaper node, node timeout ms, ends memory ms, history cap, room key ttl ms,
--   log max length.
-- Reply: {member, registration json, removed (1|0), ...} for every session of every node
--   claimed, member = "blog:post:session".

local prefix, reaper = ARGV[1], ARGV[2]
local timeout, ends_memory = tonumber(ARGV[3]), tonumber(ARGV[4])
local cap, ttl, maxlen = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local nodes = prefix .. ':nodes'
local now = now_ms()
local end_json = '{"ended_at":' .. fmt(now) .. ',"abnormal":true,"clock":null}'
local reply = {}

for _, node in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', '(' .. fmt(now - timeout))) do
  -- A node does not reap itself: its own heartbeat tells it what happened.
  if node ~= reaper and redis.call('ZREM', nodes, node) == 1 then
    local index = node_key(prefix, node, 'sessions')
    for _, member in ipairs(redis.call('SMEMBERS', index)) do
      local room, sid = split_member(member)
      if room then
        local R = room_keys(prefix, room)
        local held = redis.call('HGET', R.sessions, sid)
        if held then
          local holder = cjson.decode(held)
          if holder.node == node then
            remove_session(prefix, R, node, sid, holder.ukey)
            record_end(R, sid, end_json, now, now, ends_memory, cap, ttl)
            log_add(R, maxlen, ttl, 'n', reaper, 'k', 'gone', 'd', sid)
            reply[#reply + 1] = member
            reply[#reply + 1] = held
            reply[#reply + 1] = 1
          end
        end
      end
    end
    local replaced = redis.call('HGETALL', node_key(prefix, node, 'replaced'))
    for i = 1, #replaced, 2 do
      reply[#reply + 1] = replaced[i]
      reply[#reply + 1] = replaced[i + 1]
      reply[#reply + 1] = 0
    end
    redis.call('DEL', index, node_key(prefix, node, 'replaced'), node_key(prefix, node, 'info'))
    redis.call('SET', node_key(prefix, node, 'reaped'), reaper, 'PX', ttl)
  end
end
return reply

-- Admission of a session to a room, decided atomically for the whole cluster.
--
-- KEYS: the room's sessions, contributors, ends, ends_at, blocked, log.
-- ARGV: prefix, room ("blog:post"), node, conn, session id, contributor key, registration
--   json, now ms, max contributors, max connections (0 = unlimited), blocked memory ms,
--   ends memory ms, history cap, room key ttl ms, log max length.
-- Reply, one of:
--   {'conflict'}: the session id is registered to another user.
--   {'refused', limit, kind, session count, first (1|0), contributor keys...}
--   {'admitted', session count, previous end json|false, replaced node|false,
--    replaced conn|false, contributor keys...}
-- The rule is rtc.limits.RoomLimits.reached: connections first, then contributors; a
-- present contributor's further tabs pass the contributor limit; nobody is evicted.

local prefix, room, node = ARGV[1], ARGV[2], ARGV[3]
local conn, sid, ukey, json = tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local now = tonumber(ARGV[8])
local max_contributors, max_connections = tonumber(ARGV[9]), tonumber(ARGV[10])
local blocked_memory, ends_memory = tonumber(ARGV[11]), tonumber(ARGV[12])
local cap, ttl, maxlen = tonumber(ARGV[13]), ARGV[14], ARGV[15]
local R = given_room(room)
local member = room .. ':' .. sid

local function previous_end()
  trim(R.ends_at, R.ends, now, ends_memory, cap)
  return redis.call('HGET', R.ends, sid)
end

local function admitted(replaced_node, replaced_conn)
  local reply = {'admitted', redis.call('HLEN', R.sessions), previous_end(),
    replaced_node, replaced_conn}
  for _, key in ipairs(redis.call('HKEYS', R.contributors)) do
    reply[#reply + 1] = key
  end
  return reply
end

local held = redis.call('HGET', R.sessions, sid)
if held then
  local holder = cjson.decode(held)
  if holder.ukey ~= ukey then
    return {'conflict'}
  end
  if holder.node == node and holder.conn == conn then
    return admitted(false, false)  -- the same admission again
  end
  -- The same session of the same user, reconnected through another node or connection
  -- (its old socket not noticed dead yet): it takes the registration over, with no limit
  -- to pass (it holds its place). The old holder's node learns it from the room log and
  -- from its `replaced` hash, and closes the old connection without removing presence.
  redis.call('HSET', R.sessions, sid, json)
  redis.call('HSET', node_key(prefix, holder.node, 'replaced'), member, held)
  redis.call('SREM', node_key(prefix, holder.node, 'sessions'), member)
  redis.call('SADD', node_key(prefix, node, 'sessions'), member)
  local old_conn = fmt(holder.conn)
  if holder.node ~= node then
    -- (a node skips its own entries: a takeover on one node is that node's own business)
    log_add(R, maxlen, ttl, 'n', node, 'k', 'replaced', 't', holder.node, 'd', old_conn)
  end
  return admitted(holder.node, old_conn)
end

local sessions = redis.call('HLEN', R.sessions)
local limit, kind = nil, nil
if max_connections > 0 and sessions >= max_connections then
  limit, kind = max_connections, 'connections'
elseif max_contributors > 0 and redis.call('HEXISTS', R.contributors, ukey) == 0
    and redis.call('HLEN', R.contributors) >= max_contributors then
  limit, kind = max_contributors, 'contributors'
end

if limit then
  -- One blocked event per session: a client that keeps retrying is refused again, but
  -- only its first refusal within the memory window is `first`.
  trim(R.blocked, false, now, blocked_memory, cap)
  local first = 0
  if not redis.call('ZSCORE', R.blocked, sid) then
    redis.call('ZADD', R.blocked, fmt(now), sid)
    trim(R.blocked, false, now, blocked_memory, cap)
    first = 1
  end
  touch(R, ttl)
  local reply = {'refused', limit, kind, sessions, first}
  for _, key in ipairs(redis.call('HKEYS', R.contributors)) do
    reply[#reply + 1] = key
  end
  return reply
end

add_session(prefix, R, node, sid, json, ukey)
return admitted(false, false)

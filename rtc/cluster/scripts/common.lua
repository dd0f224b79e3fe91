-- Helpers shared by every script: rtc/cluster/scripts.py puts this file before each one.
--
-- Key names follow rtc/cluster/keys.py. A room's keys share the hash tag {blog:post}; the
-- node-wide keys (the node list, a node's session index, the set of rooms) are built here
-- from the prefix. That is fine on a single Redis; a Redis Cluster deployment would keep
-- the node indexes per hash slot instead, so that each script touches one slot.
--
-- Registrations are JSON written by Python (rtc/cluster/registry.py) and stored as is:
-- scripts read only `node`, `conn` (small integers) and `ukey` (the contributor key,
-- "u:<user>" or "s:<session>", a string, so that no user id goes through a Lua double).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An integral number as Redis wants it (tostring would write 1.7e+12).
local function fmt(n)
  return string.format('%.0f', n)
end

local function node_key(prefix, node, what)
  return prefix .. ':node:' .. node .. ':' .. what
end

-- The keys of the room "blog:post".
local function room_keys(prefix, room)
  local base = prefix .. ':{' .. room .. '}:'
  return {
    room = room,
    sessions = base .. 'sessions',
    contributors = base .. 'contributors',
    ends = base .. 'ends',
    ends_at = base .. 'ends_at',
    blocked = base .. 'blocked',
    log = base .. 'log',
  }
end

-- The room keys a script was given (KEYS, in the order registry.py passes them).
local function given_room(room)
  return {
    room = room,
    sessions = KEYS[1],
    contributors = KEYS[2],
    ends = KEYS[3],
    ends_at = KEYS[4],
    blocked = KEYS[5],
    log = KEYS[6],
  }
end

-- "blog:post:session" -> "blog:post", "session"
local function split_member(member)
  return string.match(member, '^(%d+:%d+):(%d+)$')
end

-- At most this many expired entries go per call, so that no call runs long.
local TRIM_BATCH = 1000

-- Forget entries of a zset (and of the hash beside it, if any) older than the window, and
-- the oldest ones beyond the cap.
local function trim(zset, hash, now, window, cap)
  local old = redis.call('ZRANGEBYSCORE', zset, '-inf', '(' .. fmt(now - window),
    'LIMIT', 0, TRIM_BATCH)
  local over = redis.call('ZCARD', zset) - #old - cap
  if over > 0 then
    for _, sid in ipairs(redis.call('ZRANGE', zset, #old, #old + math.min(over, TRIM_BATCH) - 1)) do
      old[#old + 1] = sid
    end
  end
  if #old > 0 then
    redis.call('ZREM', zset, unpack(old))
    if hash then
      redis.call('HDEL', hash, unpack(old))
    end
  end
end

-- Room history keys vanish a while after the last write (an abandoned room leaves nothing).
-- The roster itself (sessions, contributors) is deleted when its last session goes.
local function touch(R, ttl)
  redis.call('PEXPIRE', R.ends, ttl)
  redis.call('PEXPIRE', R.ends_at, ttl)
  redis.call('PEXPIRE', R.blocked, ttl)
end

local function log_add(R, maxlen, ttl, ...)
  redis.call('XADD', R.log, 'MAXLEN', '~', maxlen, '*', ...)
  redis.call('PEXPIRE', R.log, ttl)
end

local function record_end(R, sid, end_json, ended_at, now, window, cap, ttl)
  redis.call('HSET', R.ends, sid, end_json)
  redis.call('ZADD', R.ends_at, fmt(ended_at), sid)
  trim(R.ends_at, R.ends, now, window, cap)
  touch(R, ttl)
end

local function add_session(prefix, R, node, sid, json, ukey)
  redis.call('HSET', R.sessions, sid, json)
  redis.call('HINCRBY', R.contributors, ukey, 1)
  redis.call('SADD', prefix .. ':rooms', R.room)
  redis.call('SADD', node_key(prefix, node, 'sessions'), R.room .. ':' .. sid)
end

-- Remove a registration (of `node`, whose contributor key is `ukey`); an emptied room
-- leaves the set of rooms.
local function remove_session(prefix, R, node, sid, ukey)
  redis.call('HDEL', R.sessions, sid)
  if redis.call('HINCRBY', R.contributors, ukey, -1) <= 0 then
    redis.call('HDEL', R.contributors, ukey)
  end
  redis.call('SREM', node_key(prefix, node, 'sessions'), R.room .. ':' .. sid)
  if redis.call('HLEN', R.sessions) == 0 then
    redis.call('DEL', R.sessions, R.contributors)
    redis.call('SREM', prefix .. ':rooms', R.room)
  end
end

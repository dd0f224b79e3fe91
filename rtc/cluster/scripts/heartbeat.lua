-- A node is alive: its score in the node list is Redis's clock now (node clocks may drift).
--
-- KEYS: none (node-wide; see common.lua).
-- ARGV: prefix, node, node timeout ms, info field, value, ...
-- Reply: {now ms, reaped (1|0), nodes alive, missing (1|0)}; `reaped` is reported once.

local prefix, node, timeout = ARGV[1], ARGV[2], tonumber(ARGV[3])
local nodes = prefix .. ':nodes'
local now = now_ms()
local missing = redis.call('ZSCORE', nodes, node) == false
local reaped = redis.call('DEL', node_key(prefix, node, 'reaped')) == 1
redis.call('ZADD', nodes, fmt(now), node)
if #ARGV > 3 then
  redis.call('HSET', node_key(prefix, node, 'info'), unpack(ARGV, 4))
end
local alive = redis.call('ZCOUNT', nodes, fmt(now - timeout), '+inf')
return {fmt(now), reaped and 1 or 0, alive, missing and 1 or 0}

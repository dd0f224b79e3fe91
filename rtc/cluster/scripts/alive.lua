-- The nodes alive: heartbeat within the node timeout, by Redis's clock.
--
-- KEYS: none (node-wide; see common.lua).
-- ARGV: prefix, node timeout ms.
-- Reply: node ids.

local now = now_ms()
return redis.call('ZRANGEBYSCORE', ARGV[1] .. ':nodes', fmt(now - tonumber(ARGV[2])), '+inf')

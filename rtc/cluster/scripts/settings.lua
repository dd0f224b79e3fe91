-- The settings every node must share: recorded by the first node (no node alive, or none
-- recorded), compared by the others.
--
-- KEYS: none (node-wide; see common.lua).
-- ARGV: prefix, node timeout ms, name, value, ...
-- Reply: false (recorded or equal) or the name of the first setting that differs.

local prefix, timeout = ARGV[1], tonumber(ARGV[2])
local key = prefix .. ':settings'
local now = now_ms()
local alive = redis.call('ZCOUNT', prefix .. ':nodes', fmt(now - timeout), '+inf')
if alive == 0 or redis.call('EXISTS', key) == 0 then
  redis.call('DEL', key)
  if #ARGV > 2 then
    redis.call('HSET', key, unpack(ARGV, 3))
  end
  return false
end
for i = 3, #ARGV, 2 do
  if redis.call('HGET', key, ARGV[i]) ~= ARGV[i + 1] then
    return ARGV[i]
  end
end
return false

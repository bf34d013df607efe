-- worker_liveness.lua: refresh a worker's liveness key in one dedup shard.
--
-- KEYS[1]  {prefix}worker:{<shard>}:<instance>
-- ARGV[1]  the worker's incarnation (fixed width, ordered by process start)
-- ARGV[2]  TTL in milliseconds
--
-- Returns 1 = refreshed
--         0 = a newer incarnation of the same instance holds the key: this process was superseded
--             (left untouched, so its claims are not mistaken for live ones of the successor)

local current = redis.call('GET', KEYS[1])
if current and current > ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1

-- Atomic frequency-cap take for one (user, category, channel): every applicable counter must be
-- below its max, then all of them are incremented; otherwise nothing is incremented.
-- Counters are fixed windows; each key names its window and expires at the window's end (a TTL
-- relative to the caller's clock, so a clock offset between caller and Redis does not matter).
--
-- KEYS[i]          counter key of cap i (one user's keys share the {user_id} hash tag)
-- ARGV[2*i - 1]    max of cap i (integer >= 0)
-- ARGV[2*i]        seconds until the end of cap i's window, plus grace (the counter's TTL)
-- Returns {0, count_1, ...} when granted (counts after the increment), or {i, count_i} when cap i
-- refused (its current count, not incremented).
for i = 1, #KEYS do
  local max = tonumber(ARGV[2 * i - 1])
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  if current >= max then
    return {i, current}
  end
end
local result = {0}
for i = 1, #KEYS do
  local count = redis.call('INCR', KEYS[i])
  result[i + 1] = count
  if count == 1 or redis.call('TTL', KEYS[i]) < 0 then
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[2 * i]))
  end
end
return result

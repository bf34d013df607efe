-- count_once.lua: count each (counter, message) of a campaign's settled outcomes once, so an outcome
-- settled again after a worker crash (redelivered before its offset was committed) is not counted twice.
--
-- KEYS[1]  {prefix}campaign:{c<id>}:progress  hash of the campaign's counters
-- KEYS[2]  {prefix}campaign:{c<id>}:counted   set of "<counter>:<message id>" already counted
--          (both carry the campaign's hash tag: one cluster slot)
-- ARGV[1]  the counter (failed, deduplicated, suppressed)
-- ARGV[2]  TTL of the counted set in seconds
-- ARGV[3..] message ids
--
-- Returns how many of the messages were new (counted now).

-- Step 1: remember every message under this counter; SADD answers 1 only the first time.
local new = 0
for i = 3, #ARGV do
  new = new + redis.call('SADD', KEYS[2], ARGV[1] .. ':' .. ARGV[i])
end

-- Step 2: count the new ones only.
if new > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], new)
end

-- Step 3: the set lives as long as the campaign's other state.
redis.call('EXPIRE', KEYS[2], ARGV[2])
return new

-- dedup_take_over.lua: take a dedup claim over from an owner that can no longer send it.
--
-- KEYS[1]  {prefix}dedup:{<shard>}:<idempotency key>
-- KEYS[2]  the owner's liveness key in the same shard: {prefix}worker:{<shard>}:<owner instance>
--          (same {<shard>} hash tag as KEYS[1]: one cluster slot)
-- ARGV[1]  the claim the caller read (the owner's token, '<instance>|<incarnation>')
-- ARGV[2]  the owner's incarnation
-- ARGV[3]  '1' when the owner is an older incarnation of the caller's own instance (that process
--          is gone: its successor started), else '0'
-- ARGV[4]  the caller's token
-- ARGV[5]  the caller's lease in milliseconds
-- ARGV[6]  the sent marker ('sent')
--
-- Returns 1 = taken over (the claim is the caller's now: send)
--         0 = the owner is alive, or another worker holds the claim now (in flight)
--         2 = sent meanwhile (drop the message)

local key = KEYS[1]

-- Step 1: the claim as it is now; the decision below only holds for the claim the caller read.
local current = redis.call('GET', key)
if current == ARGV[6] then
  return 2
end
if current == false then
  -- Released or expired since the caller read it: an ordinary claim.
  redis.call('SET', key, ARGV[4], 'PX', ARGV[5])
  return 1
end
if current ~= ARGV[1] then
  return 0
end

-- Step 2: an owner that still refreshes its liveness key (with its own incarnation) keeps its
-- claim, unless the caller is that instance's successor (the owner process is gone).
if ARGV[3] ~= '1' and redis.call('GET', KEYS[2]) == ARGV[2] then
  return 0
end

-- Step 3: the owner died (liveness expired) or was restarted: the claim passes to the caller.
redis.call('SET', key, ARGV[4], 'PX', ARGV[5])
return 1

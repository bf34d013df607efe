-- dedup_confirm.lua: compare-and-set a dedup claim to 'sent' once the provider accepted the message.
--
-- KEYS[1]  {prefix}dedup:{<shard>}:<idempotency key>
-- KEYS[2]  optional: a counter in which this message's send is counted (its shard of a campaign's
--          `sent`), once: only by the confirm that records it sent (1 or 3), so a redelivery never
--          counts it again. It carries the same {<shard>} hash tag as KEYS[1]: one cluster slot.
-- ARGV[1]  worker token that claimed the key
-- ARGV[2]  sent marker value ('sent')
-- ARGV[3]  TTL of the sent marker in milliseconds
-- ARGV[4]  with KEYS[2]: the counter's TTL in milliseconds (renewed by every count)
--
-- Returns 1 = confirmed (our claim became 'sent')
--         2 = already sent (another worker confirmed first; nothing written)
--         3 = lease expired, nobody held the key: 'sent' recorded (we did send)
--         0 = another worker holds a newer claim: left untouched (a duplicate send may be happening)

local key = KEYS[1]
local token = ARGV[1]
local sent = ARGV[2]
local ttl_ms = tonumber(ARGV[3])

local function tally()
  if KEYS[2] then
    redis.call('INCR', KEYS[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
  end
end

-- Step 1: read the current owner.
local current = redis.call('GET', key)

-- Step 2: still ours -> overwrite with the sent marker and its (long) TTL.
if current == token then
  redis.call('SET', key, sent, 'PX', ttl_ms)
  tally()
  return 1
end

-- Step 3: already marked sent by someone else -> keep their marker and TTL.
if current == sent then
  return 2
end

-- Step 4: key gone (lease expired, or the claim failed open while Redis was down): record the
-- send so later redeliveries are suppressed; nobody else's lease is overwritten.
if current == false then
  redis.call('SET', key, sent, 'PX', ttl_ms)
  tally()
  return 3
end

-- Step 5: a different worker re-claimed after our lease expired; never clobber its lease.
return 0

-- token_bucket_take.lua: refill-and-take on one token bucket, using the Redis server clock only.
--
-- KEYS[1]  bucket hash {tokens, ts, blocked_until}; ts/blocked_until in microseconds since epoch
-- ARGV[1]  rate         tokens per second (> 0)
-- ARGV[2]  burst        bucket capacity (>= 1)
-- ARGV[3]  n            tokens wanted (>= 1)
-- ARGV[4]  reserve      tokens that must remain after the take (0 for transactional traffic)
-- ARGV[5]  partial      '1' = grant up to n (take_many), '0' = all-or-nothing (take)
-- ARGV[6]  idle_ttl_ms  PEXPIRE applied to the key after every call
--
-- Provider contracts are served by token_bucket_book.lua (a schedule of send times) instead; this
-- script is the plain bucket, for campaign throttles.
--
-- Returns {granted, wait_us, tokens_left}: wait_us is 0 when everything asked for was granted,
-- otherwise the microseconds until the rest could be granted (lower bound: others may take first).
-- tokens_left is a string because Redis truncates Lua numbers to integers in replies.
--
-- Redis >= 5 replicates scripts by effects, so calling TIME (non-deterministic) before writing is
-- allowed without redis.replicate_commands(); Redis 7 removed verbatim script replication.

local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local reserve = tonumber(ARGV[4])
local partial = ARGV[5] == '1'
local idle_ttl_ms = tonumber(ARGV[6])

-- Step 1: read the server clock; it is the only clock every worker agrees on.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- Step 2: load state; a missing (new or idle-expired) bucket starts full.
local state = redis.call('HMGET', key, 'tokens', 'ts', 'blocked_until')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
local blocked_until = tonumber(state[3]) or 0
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end

-- Step 3: refill for the elapsed time (never negative: ts may lie in the future after hold()).
local elapsed = now - ts
if elapsed > 0 then
  tokens = math.min(burst, tokens + elapsed * rate / 1000000)
  ts = now
end
if tokens > burst then
  tokens = burst  -- burst may have been lowered since the last call
end

-- Step 4: a provider-imposed hold blocks every priority until blocked_until.
local granted = 0
local wait_us = 0
local need = partial and 1 or n
if now < blocked_until then
  -- Tokens only start refilling at blocked_until (see hold), so add the refill time for `need`.
  local deficit = math.max(0, reserve + need - tokens)
  wait_us = (blocked_until - now) + math.ceil(deficit * 1000000 / rate)
else
  -- Step 5: grant what the priority allows; bulk must leave `reserve` tokens in the bucket.
  local available = tokens - reserve
  if available >= n then
    granted = n
  elseif partial and available >= 1 then
    granted = math.floor(available)
  end
  tokens = tokens - granted
  -- Step 6: if short, compute when the remainder (or, for partial, one more token) is available.
  if granted < n then
    local deficit = reserve + need - tokens
    wait_us = math.max(1, math.ceil(deficit * 1000000 / rate))
  end
end

-- Step 7: persist state and extend the idle expiry (must outlive any hold still pending).
redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', ts))
local ttl = idle_ttl_ms
if blocked_until > now then
  ttl = ttl + math.ceil((blocked_until - now) / 1000)
end
redis.call('PEXPIRE', key, ttl)

return {granted, wait_us, string.format('%.6f', tokens)}

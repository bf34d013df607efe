-- token_bucket_hold.lua: drain a token bucket and block it until a provider's reset time.
--
-- KEYS[1]  bucket hash {tokens, ts, blocked_until}; ts/blocked_until in microseconds since epoch
-- ARGV[1]  mode         'until' = ARGV[2] is an absolute epoch time, 'for' = relative seconds
-- ARGV[2]  seconds      epoch seconds (mode 'until') or a duration (mode 'for'), may be fractional
-- ARGV[3]  idle_ttl_ms  idle expiry applied after the hold ends
--
-- Returns blocked_until in microseconds since epoch (the later of the existing and the new hold).

local key = KEYS[1]
local mode = ARGV[1]
local seconds = tonumber(ARGV[2])
local idle_ttl_ms = tonumber(ARGV[3])

-- Step 1: server clock (effects replication makes TIME-before-write safe on Redis >= 5).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- Step 2: convert the request to an absolute hold end in microseconds.
local until_us
if mode == 'for' then
  until_us = now + math.ceil(seconds * 1000000)
else
  until_us = math.ceil(seconds * 1000000)
end

-- Step 3: never shorten an existing hold (two workers may report different reset times).
local existing = tonumber(redis.call('HGET', key, 'blocked_until')) or 0
if existing > until_us then
  until_us = existing
end

-- Step 4: a hold in the past is a no-op (stale Retry-After); report the current hold end.
if until_us <= now then
  return existing
end

-- Step 5: drain the bucket; refill starts at the hold end so traffic ramps up at `rate`
-- instead of bursting the instant the provider's window resets.
redis.call('HSET', key, 'tokens', '0', 'ts', string.format('%d', until_us),
           'blocked_until', string.format('%d', until_us))

-- Step 6: keep the key alive for the hold plus the usual idle period.
redis.call('PEXPIRE', key, idle_ttl_ms + math.ceil((until_us - now) / 1000))
return until_us

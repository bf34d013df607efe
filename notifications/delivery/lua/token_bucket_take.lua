-- token_bucket_take.lua: refill-and-take on one token bucket, using the Redis server clock only.
--
-- KEYS[1]  bucket hash {tokens, ts, blocked_until}; ts/blocked_until in microseconds since epoch
-- ARGV[1]  rate         tokens per second (> 0)
-- ARGV[2]  burst        bucket capacity (>= 1)
-- ARGV[3]  n            tokens wanted (>= 1)
-- ARGV[4]  reserve      tokens that must remain after the take (0 for transactional traffic)
-- ARGV[5]  partial      '1' = grant up to n (take_many), '0' = all-or-nothing (take)
-- ARGV[6]  idle_ttl_ms  PEXPIRE applied to the key after every call
-- ARGV[7]  window_us    optional; > 0 adds a sliding-window cap: at most window_limit tokens are
--                       granted in any window of window_us microseconds (KEYS[2] logs the grants)
-- ARGV[8]  window_limit optional; the cap per window
-- KEYS[2]  list of "grant_time_us:count" entries, oldest first (only with window_us > 0)
--
-- Why the window: a bucket of rate R and burst B lets R + B through in some 1 s windows, and the
-- grant-to-arrival jitter of many workers bunches requests further. A provider that enforces
-- exactly R per 1 s answers both with 429. With the window (e.g. R per 1.02 s) no 1 s window at the
-- provider sees more than R while the jitter stays under the extra 20 ms; the bucket still shapes
-- the short term (bursts of at most B). Bulk must leave `reserve` in the window as in the bucket.
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
local window_us = tonumber(ARGV[7] or '0') or 0
local window_limit = tonumber(ARGV[8] or '0') or 0

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

-- Step 3b: the sliding window: forget grants older than window_us, count the rest.
local in_window = 0
local wkey = KEYS[2]
if window_us > 0 then
  in_window = tonumber(redis.call('HGET', key, 'wcount')) or 0
  while true do
    local head = redis.call('LINDEX', wkey, 0)
    if not head then
      in_window = 0  -- empty (or expired) log: nothing granted within the window
      break
    end
    local sep = string.find(head, ':', 1, true)
    if now - tonumber(string.sub(head, 1, sep - 1)) < window_us then
      break
    end
    in_window = in_window - tonumber(string.sub(head, sep + 1))
    redis.call('LPOP', wkey)
  end
  if in_window < 0 then
    in_window = 0
  end
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
  if window_us > 0 then
    available = math.min(available, window_limit - in_window - reserve)
  end
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
    -- The window frees room as its oldest grants age out: walk them until enough have.
    local w_deficit = in_window + reserve + need - window_limit
    if window_us > 0 and w_deficit > 0 then
      local i = 0
      while true do
        local entry = redis.call('LINDEX', wkey, i)
        if not entry then
          break
        end
        local sep = string.find(entry, ':', 1, true)
        w_deficit = w_deficit - tonumber(string.sub(entry, sep + 1))
        if w_deficit <= 0 then
          local w_wait = tonumber(string.sub(entry, 1, sep - 1)) + window_us - now
          if w_wait > wait_us then
            wait_us = w_wait
          end
          break
        end
        i = i + 1
      end
    end
  end
  if window_us > 0 and granted > 0 then
    redis.call('RPUSH', wkey, string.format('%d:%d', now, granted))
    in_window = in_window + granted
  end
end

-- Step 7: persist state and extend the idle expiry (must outlive any hold still pending).
redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', ts))
local ttl = idle_ttl_ms
if blocked_until > now then
  ttl = ttl + math.ceil((blocked_until - now) / 1000)
end
if window_us > 0 then
  redis.call('HSET', key, 'wcount', string.format('%d', in_window))
  ttl = math.max(ttl, math.ceil(window_us / 1000) + 1000)
  redis.call('PEXPIRE', wkey, ttl)
end
redis.call('PEXPIRE', key, ttl)

return {granted, wait_us, string.format('%.6f', tokens)}

-- token_bucket_book.lua: book send times on a provider's global schedule (GCRA), Redis clock only.
--
-- KEYS[1]  the bucket hash shared with token_bucket_hold.lua; fields used here:
--          tat            theoretical arrival time of the next slot, microseconds since epoch
--          blocked_until  a provider-imposed hold (written by the hold script)
-- ARGV[1]  interval_us   microseconds between two slots (1e6 / rate, stretched by a contract margin)
-- ARGV[2]  tolerance_us  burst tolerance: (burst - 1) x interval; slots up to this early are allowed
-- ARGV[3]  n             slots wanted
-- ARGV[4]  min_n         grant nothing unless at least min_n slots (capped at n) fit in the horizon
-- ARGV[5]  horizon_us    latest slot that may be booked, relative to now; may be negative (bulk:
--                        horizon minus the transactional reserve, see TokenBucket.book)
-- ARGV[6]  idle_ttl_ms   PEXPIRE applied after the booking's last slot has passed
-- ARGV[7]  ramp_us       optional; > 0: after the schedule was idle for this long (or after a hold),
--                        slots start two intervals apart and close to one over ramp_us
--
-- Returns {granted, wait_us, now_us, offset_1, ..., offset_granted}: offset_i is when the i-th booked
-- slot starts, in microseconds after now_us, this script's clock reading (0 = at once); wait_us is
-- 0 when all n were booked, otherwise the time until the next min_n slots would fit in the horizon.
--
-- Why book instead of take: a take answers "no token, ask again in 1/rate", so every worker process
-- with waiting sends polls Redis at the contract rate (16 processes at 500/s: 8,000 scripts/s),
-- burns the CPU that the sends need, and the scheduling delays that follow bunch the requests the
-- provider sees. A booking hands out the *times* of the next slots, one interval apart, up to a short
-- horizon ahead; the worker starts each send at its slot on its own event loop, and asks again only
-- when min_n more slots fit. Slots are spaced by the schedule, not by who polled first, so the
-- requests reach the provider evenly; the offsets are relative to the Redis clock's `now`, so worker
-- clocks never enter (no skew).
--
-- Why the ramp: when a backlog hits an idle fleet, every worker process is busy at once (fetching,
-- parsing, claiming, connecting), and the first second's sends arrive with far more jitter than
-- later ones. Starting at half the rate leaves that second room for it, at the cost of a quarter of
-- ramp_us x rate sends per idle-to-busy change.

local key = KEYS[1]
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local min_n = tonumber(ARGV[4])
local horizon = tonumber(ARGV[5])
local idle_ttl_ms = tonumber(ARGV[6])
local ramp = tonumber(ARGV[7] or '0') or 0

-- Step 1: the server clock, the only clock every worker agrees on.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- Step 2: the next free slot. A slot in the past is gone (idle time is not banked beyond the burst
-- tolerance). A provider hold moves it to the hold's end, without a burst: traffic ramps at rate.
-- An idle schedule (or one leaving a hold) starts its ramp.
local state = redis.call('HMGET', key, 'tat', 'blocked_until', 'busy_since')
local tat = tonumber(state[1])
local blocked_until = tonumber(state[2]) or 0
local busy_since = tonumber(state[3]) or now
if tat == nil or tat < now - ramp then
  busy_since = now
end
tat = tat or now
if blocked_until > now and tat < blocked_until + tolerance then
  tat = blocked_until + tolerance
  busy_since = blocked_until
end
if tat < now then
  tat = now
end

-- The gap after the slot whose theoretical time is `at`: one interval, or up to two in the ramp.
local function gap(at)
  if ramp > 0 then
    local into = at - busy_since
    if into < ramp then
      if into < 0 then
        into = 0
      end
      return interval * (2 - into / ramp)
    end
  end
  return interval
end

-- Step 3: book. Slot i starts at max(now, tat_i - tolerance) and may be booked while it starts no
-- later than now + horizon. Never ask for more than could ever fit in the horizon (at the full
-- rate), or a small horizon would refuse every booking.
local limit = now + horizon
local most = 0
if horizon + tolerance >= 0 then
  most = math.floor((horizon + tolerance) / interval) + 1
end
if min_n > n then
  min_n = n
end
if min_n > most then
  min_n = math.max(most, 1)
end
local slots = {}
local probe = tat
while #slots < n and probe - tolerance <= limit do
  slots[#slots + 1] = math.max(now, probe - tolerance) - now
  probe = probe + gap(probe)
end

local reply = {0, 0, now}
local granted = #slots
if granted < min_n then
  granted = 0
else
  for i = 1, granted do
    reply[#reply + 1] = slots[i]
  end
  tat = probe
end
reply[1] = granted

-- Step 4: when short, the wait until the next min_n slots fit (the (min_n)-th one is the last).
if granted < n then
  local want = math.min(min_n, n - granted)
  local last = tat
  for _ = 2, want do
    last = last + gap(last)
  end
  reply[2] = math.max(1, math.ceil(last - tolerance - limit))
end

-- Step 5: persist; the key must outlive its future bookings (and any hold) plus the idle period.
redis.call('HSET', key, 'tat', string.format('%d', math.ceil(tat)), 'busy_since', string.format('%d', busy_since))
local ttl = idle_ttl_ms + math.ceil(math.max(0, tat - now, blocked_until - now) / 1000)
redis.call('PEXPIRE', key, ttl)
return reply

-- dedup_release.lua: compare-and-delete a dedup claim so the message can be retried elsewhere.
--
-- KEYS[1]  {prefix}dedup:{idempotency_key}
-- ARGV[1]  worker token that claimed the key
--
-- Returns 1 if our claim was deleted, 0 if the key was gone, 'sent', or held by another worker.

-- Step 1: delete only when the stored value is exactly our token (never a 'sent' marker or
-- another worker's lease), atomically with the comparison.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end

-- Step 2: not ours: leave it alone.
return 0

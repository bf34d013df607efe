-- Fenced write of one cached preference state: SET only if the cache holds nothing or an older version.
-- A reader that loaded version N from the database before a writer committed N+1 can then never
-- overwrite the writer's N+1 with its stale N (the writer publishes N+1 on commit with this script).
--
-- KEYS[1]  notif:prefs:<user_id>
-- ARGV[1]  version (integer) of the state being written
-- ARGV[2]  payload: orjson of {"v": version, "doc": document} ("v" is always the first member)
-- ARGV[3]  TTL in seconds
-- Returns 1 when written, 0 when the cache already holds this version or a newer one.
local current = redis.call('GET', KEYS[1])
if current then
  local cached = tonumber(string.match(current, '^{"v":(%d+)'))
  if cached == nil then
    local ok, decoded = pcall(cjson.decode, current)
    if ok and type(decoded) == 'table' then
      cached = tonumber(decoded['v'])
    end
  end
  if cached ~= nil and cached >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1

-- Counts one destructive run of a company against its blast-radius brake, atomically: drops
-- counts older than the window; refuses while the brake is engaged; engages it (and refuses)
-- when the window already holds the limit; otherwise records the run.
--
-- KEYS: 1 the company's window (zset: member scored by start time in ms)
--       2 the company's brake (a string: JSON of when and why it engaged; absent = released)
-- ARGV: 1 now (ms)  2 window (ms)  3 limit (runs per window)  4 member  5 brake JSON to set
-- Returns: n >= 1 (recorded; n runs in the window) | -1 (engaged already) | -2 (engaged now)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[5])
  return -2
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n + 1

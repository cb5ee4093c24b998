-- Fires a schedule's tick: moves its timer entry to the next tick only if it still holds the
-- tick the caller read (compare and set), records the tick as fired and appends the firing to
-- the firings stream, all at once, so several schedulers seeing the same tick record one firing.
--
-- KEYS: 1 the timer index of shard 0 (sorted set: `sched:<id>` -> next tick, ms)
--       2 the last fired tick per schedule (hash: id -> ms)
--       3 the firings stream
-- ARGV: 1 the timer entry (`sched:<id>`)
--       2 the tick being fired (ms), as read
--       3 the next tick (ms), or -1 when the expression has none
--       4 the schedule's id
-- Returns 1 if it fired, 0 if the entry no longer held that tick (another scheduler fired it).
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
if tonumber(ARGV[3]) < 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'id', ARGV[4], 'tick', ARGV[2])
return 1

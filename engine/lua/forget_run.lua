-- Deletes an ended run past the retention period: its hash, its history and its index entries,
-- only if it has not changed since the caller judged it (same version), so a run that moved on
-- is kept. All keys share the run's shard hash tag.
--
-- KEYS: 1 run hash, 2 run history log, 3 shard run index, 4 the status index it is in,
--       5 its company's run index, 6 the run's history stream (written by builds up to 5c13466)
-- ARGV: 1 run id, 2 the version the caller saw
-- Returns 1 if it was deleted, 0 if it changed (or is already gone).
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[6])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
return 1

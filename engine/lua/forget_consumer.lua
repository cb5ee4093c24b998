-- Removes a stream consumer that holds no job (a worker that stopped), atomically with the check
-- that its pending list is empty, so a job delivered to it in between is never dropped.
--
-- KEYS: 1 one of the shard's step streams
-- ARGV: 1 group, 2 consumer
-- Returns 1 if it was removed, 0 if it holds jobs (or is already gone).
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1

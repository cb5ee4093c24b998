-- Hands jobs a stopping worker received but never started back to its shard's step stream, as
-- new entries, so that another worker takes them at once instead of after the claim idle time.
-- A job is handed back only if the stopping consumer still holds it (no other consumer has
-- taken it over) and it is still in the stream; the run hash's record of where the job is
-- queued follows it, so that a cancel can still revoke it.
--
-- KEYS: 1 one of the shard's step streams, 2.. the run hash of each job
-- ARGV: 1 group, 2 consumer, 3 the prefix the run hash's record of a job in this stream has
--       ("" or "n:", see commit.lua), then per job: entry id, run hash field (`j:<step>:<seq>`)
-- Returns how many jobs were handed back.
local stream, group, consumer, prefix = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local released = 0
for i = 2, #KEYS do
  local id = ARGV[2 * i]
  local field = ARGV[2 * i + 1]
  local pending = redis.call('XPENDING', stream, group, id, id, 1, consumer)
  if #pending == 1 then
    local entry = redis.call('XRANGE', stream, id, id)
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
    if #entry == 1 then
      local new_id = redis.call('XADD', stream, '*', unpack(entry[1][2]))
      if redis.call('HGET', KEYS[i], field) == prefix .. id then
        redis.call('HSET', KEYS[i], field, prefix .. new_id)
      end
      released = released + 1
    end
  end
end
return released

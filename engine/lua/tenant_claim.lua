-- Claims the tenants whose delegated token refresh is due: each is moved a lease ahead in the
-- due index as it is taken, in this one script, so replicas running the refresh side by side
-- never take the same tenant, and a replica that dies mid-refresh leaves it due again once the
-- lease is over.
--
-- KEYS: 1 the due index (a sorted set: company -> due time, ms)
-- ARGV: 1 now (ms)
--       2 the lease (ms)
--       3 the most to take
-- Returns the companies taken.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, company in ipairs(due) do
  redis.call('ZADD', KEYS[1], until_ms, company)
end
return due

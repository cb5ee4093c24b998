-- Replaces a hash field's value only if it is still the one the caller read.
-- KEYS: 1 the hash. ARGV: 1 field, 2 the value read, 3 the new value. Returns 1 if replaced.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1

-- Burns a one-time secret link as it is revealed, or re-seals its value for key rotation: either
-- way only if the sealed value is still the one the caller read (compare and set), so two
-- reveals racing each other reveal once, and a rotation never resurrects a burnt value.
--
-- KEYS: 1 the link's sealed value (a string that expires when the link does)
--       2 the link's record (a hash: label, created, exp, opened; kept a while past expiry)
-- ARGV: 1 "burn" or "reseal"
--       2 the sealed value the caller read
--       3 burn: the time it is revealed (ms); reseal: the value sealed under the new key
-- Returns 1 if it burnt (or re-sealed) the value, 0 if the value was no longer the one read.
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return 0
end
if ARGV[1] == 'burn' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'opened', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
end
return 1

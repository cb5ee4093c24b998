-- Stores a tenant's rotated refresh token, only if the stored one is still the one the caller
-- redeemed (compare and set on the sealed text), so two refreshes racing keep one winner and
-- never put back an older token.
--
-- KEYS: 1 the tenant connection (a hash; field `refresh` holds the sealed refresh token)
-- ARGV: 1 the sealed refresh token the caller read and redeemed
--       2 the new refresh token, sealed
-- Returns 1 if it stored the new token, 0 if the stored one had changed (nothing written).
if redis.call('HGET', KEYS[1], 'refresh') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'refresh', ARGV[2])
return 1

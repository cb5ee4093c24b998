-- Re-adds a stream entry with new field values and deletes the old one, only if the old one still
-- has exactly the fields and values the caller read (in any order).
-- KEYS: 1 the stream. ARGV: 1 entry id, 2 field count n, 3..2+2n the fields and values read,
-- then the new fields and values. Returns 1 if rewritten.
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e ~= 1 then return 0 end
local n = tonumber(ARGV[2])
local fields = e[1][2]
if #fields ~= 2 * n then return 0 end
local current = {}
for i = 1, #fields, 2 do current[fields[i]] = fields[i + 1] end
for i = 3, 2 + 2 * n, 2 do
  if current[ARGV[i]] ~= ARGV[i + 1] then return 0 end
end
local new = {}
for i = 1, 2 * n do new[i] = ARGV[2 + 2 * n + i] end
redis.call('XADD', KEYS[1], '*', unpack(new))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1

-- Reads at most ARGV[3] first jobs of new runs from the shards' new-runs streams, in KEYS' order
-- (the caller rotates it), so a worker never takes more new runs than it has places: each one
-- taken beyond them would wait ahead of the continuations that come meanwhile. (XREADGROUP's
-- COUNT is per stream: over several streams it can return that many from each.) On one server
-- only: a cluster's reader reads one shard, with XREADGROUP itself.
--
-- KEYS: the new-runs streams, in the order to read them
-- ARGV: 1 group, 2 consumer, 3 how many entries at most
-- Returns what XREADGROUP returns: {{stream, {{id, {field, value, ...}}, ...}}, ...}
local want = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do
  if want <= 0 then
    break
  end
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', KEYS[i], '>')
  if reply and reply[1] and #reply[1][2] > 0 then
    want = want - #reply[1][2]
    table.insert(out, reply[1])
  end
end
return out

-- Commits one transition of one run, atomically: what changed in the run's state, its history,
-- the jobs it enqueues, the timers it arms and disarms, the revocation of queued jobs, the
-- end-of-run notice, and the acknowledgement of the job whose outcome caused it. All keys share
-- the run's shard hash tag, so the script touches one slot.
--
-- The run hash (storage format 2) holds the run in parts, so that a transition writes only what
-- it changed: v = version, c = context (written once), h = header (status, updated_at),
-- s:<step> = one step's record, j:<step>:<seq> = where a queued job is: its stream id, prefixed
-- `n:` when it is in the new-runs stream (KEYS[8]). A run written by an
-- earlier build has its whole document in `d` instead; its next transition writes every part
-- and deletes `d` (the caller sends them all).
--
-- KEYS: 1 run hash, 2 run history log (a string, one JSON entry per line), 3 shard step stream, 4 shard timer index (zset:
--       "<run>|<timer key>" scored by due time in ms), 5 shard ended-runs stream, 6 shard run
--       index (zset: run id scored by creation time in µs), 7 shard dead-letter stream,
--       8 shard new-runs step stream (the first jobs of a run that has not started: workers
--       read KEYS[3] first), 9… index and inbox keys named by index in the plan (same slot)
-- ARGV: 1 expected version ("0": the run must not exist yet)
--       2 "w" to write a transition, "" to acknowledge only
--       3 the plan, as JSON: run, company, group, ack {id, step, seq, new = the job came from the
--         new-runs stream}, new = this transition starts the run (its jobs go to KEYS[8]),
--         set = number of field/value
--         pairs to write (ARGV[4…]), del [fields], hist [ARGV index of an entry ending in \n], jobs [{step, seq, a = ARGV
--         index of the job}], zadd [[ms, key]], zrem [key], revoke [{step, seq, ref}], ended
--         status, created µs, timer key (must still be armed), dead json, indexes and inboxes
--       4… the field/value pairs, then the strings the plan names by index
-- Returns: {"ok", version, revoked refs...} | {"conflict", version, field, value, ...} (the run
--          hash as it is) | {"stale_timer"}
--
-- Batched (a worker's concurrent commits for one shard, in one call): ARGV[1] = "batch", then
-- for each commit its number of KEYS and of ARGV, then those ARGV; KEYS are the commits' KEYS one
-- after another. Each commit runs as above, in order, on its own; the reply lists their replies
-- ({"error", message} for one that raised an error: the commits before it stay written).

local function commit(KEYS, ARGV)
  local plan = cjson.decode(ARGV[3])
  local run = plan.run
  local group = plan.group

  -- Acknowledges the job; a parked job goes to the dead-letter stream, once: only if this
  -- acknowledgement is the one that took it out of the pending list.
  local function ack()
    if plan.ack then
      local stream = KEYS[3]
      if plan.ack.new then
        stream = KEYS[8]
      end
      local acked = redis.call('XACK', stream, group, plan.ack.id)
      redis.call('XDEL', stream, plan.ack.id)
      if plan.dead and acked == 1 then
        redis.call('XADD', KEYS[7], 'MAXLEN', '~', 10000, '*', 'run', run, 'job', plan.dead)
      end
    end
  end

  -- Calls a variadic command on KEYS[1] in chunks (a run with thousands of steps is written
  -- whole when it is created, more arguments than Lua can unpack at once).
  local function chunked(cmd, args)
    local n = #args
    local i = 1
    while i <= n do
      local last = math.min(i + 999, n)
      redis.call(cmd, KEYS[1], unpack(args, i, last))
      i = last + 1
    end
  end

  if ARGV[2] == '' then
    for _, key in ipairs(plan.zrem or {}) do
      redis.call('ZREM', KEYS[4], run .. '|' .. key)
    end
    if plan.ack then
      redis.call('HDEL', KEYS[1], 'j:' .. plan.ack.step .. ':' .. plan.ack.seq)
    end
    ack()
    return {'ok', redis.call('HGET', KEYS[1], 'v') or '0'}
  end

  local current = redis.call('HGET', KEYS[1], 'v') or '0'
  if current ~= ARGV[1] then
    local out = {'conflict', current}
    for _, x in ipairs(redis.call('HGETALL', KEYS[1])) do
      table.insert(out, x)
    end
    return out
  end

  if plan.timer then
    if redis.call('ZREM', KEYS[4], run .. '|' .. plan.timer) == 0 then
      return {'stale_timer'}
    end
  end

  local version = tostring(tonumber(current) + 1)

  -- Jobs first: their stream ids are written with the state, in one HSET.
  local set = {'v', version}
  for i = 4, 3 + 2 * plan.set do
    set[#set + 1] = ARGV[i]
  end
  local stream, prefix = KEYS[3], ''
  if plan.new then
    stream, prefix = KEYS[8], 'n:'
  end
  for _, job in ipairs(plan.jobs or {}) do
    local id = redis.call('XADD', stream, '*', 'r', run, 'c', plan.company, 'v', version, 'j', ARGV[job.a])
    set[#set + 1] = 'j:' .. job.step .. ':' .. job.seq
    set[#set + 1] = prefix .. id
  end
  chunked('HSET', set)

  local del = plan.del or {}
  if plan.ack then
    del[#del + 1] = 'j:' .. plan.ack.step .. ':' .. plan.ack.seq
  end
  if #del > 0 then
    chunked('HDEL', del)
  end

  if plan.created then
    redis.call('ZADD', KEYS[6], plan.created, run)
  end

  for _, a in ipairs(plan.hist or {}) do
    redis.call('APPEND', KEYS[2], ARGV[a])
  end
  -- A transition that queues nothing leaves the run waiting (at a gate, on a timer, for a
  -- parallel branch) or ended, and its log may then stay for days: APPEND grows a string by as
  -- much again as it needs, so it is rewritten at its exact size (a SET's value is allocated to
  -- fit), halving the memory of a parked run's history.
  if plan.hist and #(plan.jobs or {}) == 0 then
    local log = redis.call('GET', KEYS[2])
    if log then
      redis.call('SET', KEYS[2], log, 'KEEPTTL')
    end
  end

  for _, t in ipairs(plan.zadd or {}) do
    redis.call('ZADD', KEYS[4], t[1], run .. '|' .. t[2])
  end
  for _, key in ipairs(plan.zrem or {}) do
    redis.call('ZREM', KEYS[4], run .. '|' .. key)
  end

  -- A queued job is revoked only if no worker has received it: delivered entries sit in the
  -- group's pending list, and their outcome will still be reported.
  local revoked = {}
  for _, r in ipairs(plan.revoke or {}) do
    local field = 'j:' .. r.step .. ':' .. r.seq
    local at = redis.call('HGET', KEYS[1], field)
    if at then
      local queue, id = KEYS[3], at
      if string.sub(at, 1, 2) == 'n:' then
        queue, id = KEYS[8], string.sub(at, 3)
      end
      local pending = redis.call('XPENDING', queue, group, id, id, 1)
      if #pending == 0 and redis.call('XDEL', queue, id) == 1 then
        redis.call('HDEL', KEYS[1], field)
        table.insert(revoked, r.ref)
      end
    end
  end

  -- Indexes for listing runs and approvers' inboxes (extra KEYS, all in this shard's slot).
  if plan.idx_company then
    redis.call('ZADD', KEYS[plan.idx_company], plan.idx_score, run)
  end
  if plan.idx_from then
    redis.call('ZREM', KEYS[plan.idx_from], run)
  end
  if plan.idx_to then
    redis.call('ZADD', KEYS[plan.idx_to], plan.idx_score, run)
  end
  for _, e in ipairs(plan.inbox_add or {}) do
    redis.call('ZADD', KEYS[e[2]], e[1], run .. '|' .. e[3])
  end
  for _, e in ipairs(plan.inbox_rem or {}) do
    redis.call('ZREM', KEYS[e[1]], run .. '|' .. e[2])
  end

  if plan.ended then
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', 100000, '*', 'r', run, 's', plan.ended)
  end

  ack()

  local out = {'ok', version}
  for _, r in ipairs(revoked) do
    table.insert(out, r)
  end
  return out
end

if ARGV[1] ~= 'batch' then
  return commit(KEYS, ARGV)
end

-- The n values of t from i on, as a new table (unpack copies in C; a run's creation can carry
-- more values than one unpack may).
local function slice(t, i, n)
  if n <= 1000 then
    return {unpack(t, i, i + n - 1)}
  end
  local out = {}
  for j = 1, n do out[j] = t[i + j - 1] end
  return out
end

local replies = {}
local k, a = 1, 2
while a <= #ARGV do
  local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local keys, args = slice(KEYS, k, nk), slice(ARGV, a, na)
  k, a = k + nk, a + na
  local ok, reply = pcall(commit, keys, args)
  if ok then
    replies[#replies + 1] = reply
  else
    replies[#replies + 1] = {'error', tostring(reply)}
  end
end
return replies

-- claim: move up to N due jobs of one queue to ACTIVE under a lease.
--
-- KEYS[1]  due zset         rrq:{<queue>}:due
-- KEYS[2]  active zset      rrq:{<queue>}:active   (score = lease deadline, ms)
-- KEYS[3]  job key prefix   rrq:{<queue>}:job:     (job hash = prefix .. id)
-- KEYS[4]  debounce prefix  rrq:{<queue>}:debounce: (debounce pointer = prefix .. key)
-- ARGV[1]  max jobs to claim (>= 1)
-- ARGV[2]  owner: id of the claiming orchestrator instance
-- ARGV[3]  lease_ms
--
-- Returns {now_ms, next_due_in_ms, job...} where next_due_in_ms is the time until
-- the earliest job still waiting (-1 when none waits) and each job is
-- {id, attempt, function_name, params_json, max_retries, job_timeout_ms,
--  enqueued_at_ms, trace_parent, trace_state, run_at_ms}.
--
-- Guarantee: a claimed job's attempt is incremented (it is the fence token of
-- this attempt), its status is ACTIVE and it sits in the active zset with a
-- lease deadline in Redis time. A due entry whose record vanished or is not
-- waiting is dropped, never returned. A debounced job's window closes when it
-- is claimed: its debounce pointer is deleted, so the next call opens a new one.
local due_key = KEYS[1]
local active_key = KEYS[2]
local job_prefix = KEYS[3]
local debounce_prefix = KEYS[4]

-- Statuses as the scripts store them: compared as text, which spares a
-- string-to-number conversion per job.
local PENDING_TEXT = '1'
local ACTIVE_TEXT = '2'
local RETRYING_TEXT = '3'

local max_jobs = tonumber(ARGV[1])
local owner = ARGV[2]
local lease_ms = tonumber(ARGV[3])

-- BEGIN generated helpers: num_text (rust/rrq-store/lua/lib; make gen)
-- A number as redis.call would write it ('%.17g'), by the integer path where
-- that is the same text: glibc's '%.17g' costs about ten times its '%d'.
local function num_text(n)
  if n % 1 == 0 and n > -2^53 and n < 2^53 then return string.format('%d', n) end
  return string.format('%.17g', n)
end
-- END generated helpers

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The values every claimed job shares, as text once: redis.call turns a
-- number argument into text on every call, which was a sixth of a claim.
local now_text = num_text(now)
local deadline_text = num_text(now + lease_ms)

-- Calls `command key list...` in chunks: unpack() has a stack limit, and
-- max_jobs is the caller's. CHUNK is even so ZADD's score/member pairs hold.
local CHUNK = 1000
local function batched(command, key, list)
  for i = 1, #list, CHUNK do
    redis.call(command, key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
end

local result = {now, -1}
local ids = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, max_jobs)
-- One ZREM and one ZADD for the whole batch: Redis counts commands inside
-- scripts too, and per-job calls were a third of the claim's cost.
batched('ZREM', due_key, ids)
local leased = {}
for _, id in ipairs(ids) do
  local key = job_prefix .. id
  local f = redis.call('HMGET', key, 'status', 'attempt', 'function_name', 'params_json',
    'max_retries', 'job_timeout_ms', 'enqueued_at_ms', 'trace_parent', 'trace_state',
    'debounce_key', 'run_at_ms')
  local status = f[1]
  if status == PENDING_TEXT or status == RETRYING_TEXT then
    -- A first attempt's record has no attempt field (0 is not stored).
    local attempt, attempt_text = 1, '1'
    if f[2] then
      attempt = (tonumber(f[2]) or 0) + 1
      attempt_text = num_text(attempt)
    end
    redis.call('HSET', key, 'status', ACTIVE_TEXT, 'attempt', attempt_text,
      'lease_owner', owner, 'started_at_ms', now_text)
    leased[#leased + 1] = deadline_text
    leased[#leased + 1] = id
    if f[10] then
      local pointer = debounce_prefix .. f[10]
      if redis.call('HGET', pointer, 'job_id') == id then
        redis.call('DEL', pointer)
      end
    end
    result[#result + 1] = {id, attempt, f[3], f[4], f[5] or '0', f[6] or '0', f[7] or '0',
      f[8] or '', f[9] or '', f[11] or f[7] or '0'}
  end
end
batched('ZADD', active_key, leased)

local head = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
if head[2] then
  result[2] = math.max(0, tonumber(head[2]) - now)
end
return result

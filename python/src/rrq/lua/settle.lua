-- settle: record how a batch of attempts of one queue ended, each fenced by
-- (attempt, owner).
--
-- KEYS[1]  due zset         rrq:{<queue>}:due
-- KEYS[2]  active zset      rrq:{<queue>}:active
-- KEYS[3]  dead-letter zset rrq:{<queue>}:dlq       (score = time of death, ms)
-- KEYS[4]  job key prefix   rrq:{<queue>}:job:     (job hash = prefix .. id)
-- ARGV[1]  default result TTL ms (used when a job has none)
-- ARGV[2]  dead-letter retention ms
-- ARGV[3]  wake channel     rrq:{<queue>}:wake
-- ARGV[4]  done channel prefix rrq:{<queue>}:done:  (channel = prefix .. id)
-- then 8 values per settle, in order:
--   id, attempt (fence token from the claim), owner (orchestrator instance id
--   from the claim), action, text, error type, retry delay ms, traceback
-- where action is one of
--   complete  store text as result_json; status COMPLETED
--   retry     another attempt after the delay if retries remain, else dead-letter
--   fail      dead-letter now (fatal error, unknown handler, bad params)
--   cancel    status CANCELLED (the runner stopped the handler on request)
--   release   give the job back without charging the attempt (drain on shutdown)
-- and text is the result JSON (complete) or the error message (retry, fail,
-- cancel); the traceback (retry, fail) may be empty.
--
-- Returns three values per settle, in order: {1, new_status, run_at_ms_or_0}
-- when applied, or {0, current_status, current_attempt} when the fence did not
-- match (the job is not ACTIVE under this attempt and owner): nothing written.
--
-- Guarantee: the batch has the effect of its settles applied one by one, in
-- order; an invalid argument from the caller rejects the whole batch before
-- any write, while one job's own data (a result TTL Redis cannot apply, a
-- damaged error history, a retry delay out of range) is clamped or replaced
-- for that job alone, so it never fails its batch.
-- Terminal statuses absorb; a stale owner never overwrites a newer attempt;
-- every failed attempt is appended to errors_json; a job whose cancellation
-- was requested ends CANCELLED unless its handler completed; every terminal
-- transition publishes on the job's done channel so waiters wake without
-- polling.
--
-- Why a batch: Redis spends more on starting a script call than on a settle's
-- own commands, and an orchestrator settles hundreds of outcomes a second.
local due_key = KEYS[1]
local active_key = KEYS[2]
local dlq_key = KEYS[3]
local job_prefix = KEYS[4]

local STATUS_PENDING = 1
local STATUS_ACTIVE = 2
local STATUS_RETRYING = 3
local STATUS_COMPLETED = 4
local STATUS_FAILED = 5
local STATUS_CANCELLED = 6
local MAX_ERRORS = 100
local FIELDS = 8
local FIRST = 5
-- BEGIN generated limits: MAX_DURATION_MS (rust/rrq-store/limits.toml; make gen)
local MAX_DURATION_MS = 315360000000
-- END generated limits

-- BEGIN generated helpers: ttl_or history_with (rust/rrq-store/lua/lib; make gen)
-- The record's own TTL when Redis can apply it, else the default (text, as
-- PEXPIRE takes it). A record planted by hand or written before ranges were
-- checked must not fail the script half-way: PEXPIRE refuses a time past
-- 2^63 ms and text such as '1e3', and a script's writes before an error stay.
local function ttl_or(value, default)
  local n = tonumber(value)
  if n and n >= 1 and n <= MAX_DURATION_MS and n % 1 == 0 then return string.format('%d', n) end
  return default
end

-- The error history with one more entry, as JSON. A planted or damaged
-- errors_json (not a list, or one cjson will not encode back) starts over
-- rather than failing the script.
local function history_with(raw, entry)
  local history = {}
  if raw then
    local ok, decoded = pcall(cjson.decode, raw)
    if ok and type(decoded) == 'table' then history = decoded end
  end
  table.insert(history, entry)
  while #history > MAX_ERRORS do table.remove(history, 1) end
  local ok, text = pcall(cjson.encode, history)
  if ok then return text end
  return cjson.encode({entry})
end
-- END generated helpers

local default_ttl = ARGV[1]  -- ms, as text: only PEXPIRE reads them
local dlq_retention = ARGV[2]
local wake_channel = ARGV[3]
local done_prefix = ARGV[4]
-- Both as PEXPIRE takes them: ttl_or gives back exactly such a text (and
-- false, never equal to a string, for anything else: a missing one too).
if ttl_or(default_ttl, false) ~= default_ttl or ttl_or(dlq_retention, false) ~= dlq_retention then
  return redis.error_reply('RRQ_INVALID_ARGUMENT the result TTL and the dead-letter retention must be integers 1..'
    .. MAX_DURATION_MS .. ' (ms), got ' .. tostring(default_ttl) .. ' and ' .. tostring(dlq_retention))
end
if (#ARGV - FIRST + 1) % FIELDS ~= 0 then
  return redis.error_reply('RRQ_INVALID_ARGUMENT settle takes ' .. FIELDS .. ' values per job after ' .. (FIRST - 1) .. ', got ' .. #ARGV)
end
local ACTIONS = {complete = true, retry = true, fail = true, cancel = true, release = true}
for i = FIRST, #ARGV, FIELDS do
  local action = ARGV[i + 3]
  if not ACTIONS[action] then
    return redis.error_reply('RRQ_INVALID_ARGUMENT unknown settle action ' .. tostring(action))
  end
  if action == 'retry' and tonumber(ARGV[i + 6]) == nil then
    return redis.error_reply('RRQ_INVALID_ARGUMENT the retry delay must be a number, got ' .. tostring(ARGV[i + 6]))
  end
end

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
-- Numbers passed to redis.call again and again, as text once: redis.call
-- turns a number argument into text on every call.
local now_text = num_text(now)
local STATUS_TEXT = {}
for status = STATUS_PENDING, STATUS_CANCELLED do STATUS_TEXT[status] = tostring(status) end
local ACTIVE_TEXT = STATUS_TEXT[STATUS_ACTIVE]
local settled = {}

-- Appends one failed attempt to the job's errors_json and sets
-- last_error/last_error_type.
local function record_error(job_key, attempt, error_type, text, traceback)
  local history = history_with(redis.call('HGET', job_key, 'errors_json'), {attempt = attempt,
    error_type = error_type, message = text, traceback = traceback, at_ms = now})
  redis.call('HSET', job_key, 'errors_json', history,
    'last_error', text, 'last_error_type', error_type)
end

-- A retry delay as an integer within 0..MAX_DURATION_MS: a runner's delay
-- of 1e300, NaN or a negative number is one job's data and must neither
-- fail the batch nor store a run time that readers cannot parse.
local function clamped_delay(text)
  local n = tonumber(text)
  if not n or n ~= n or n < 0 then return 0 end
  if n > MAX_DURATION_MS then return MAX_DURATION_MS end
  return math.floor(n)
end

-- A terminal transition; `...` are more field/value pairs written in the same HSET.
local function finish(job_key, id, new_status, ttl_ms, ...)
  local status_text = STATUS_TEXT[new_status]
  redis.call('HSET', job_key, 'status', status_text, 'finished_at_ms', now_text, ...)
  redis.call('PEXPIRE', job_key, ttl_ms)
  redis.call('PUBLISH', done_prefix .. id, status_text)
  return 1, new_status, 0
end

-- Back to waiting, due at run_at.
local function wait_again(job_key, id, new_status, run_at)
  local run_at_text = num_text(run_at)
  redis.call('HSET', job_key, 'status', STATUS_TEXT[new_status], 'run_at_ms', run_at_text)
  redis.call('ZADD', due_key, run_at_text, id)
  redis.call('PUBLISH', wake_channel, run_at_text)
  return 1, new_status, run_at
end

-- Applies one settle; returns its three reply values.
local function settle_one(id, fence_attempt, owner, action, text, error_type, delay_ms, traceback)
  local job_key = job_prefix .. id
  local f = redis.call('HMGET', job_key, 'status', 'attempt', 'lease_owner', 'max_retries',
    'result_ttl_ms', 'cancel_requested')
  -- The status compared as the text the scripts store: no number conversion
  -- on the common path.
  if f[1] ~= ACTIVE_TEXT or f[2] ~= fence_attempt or f[3] ~= owner then
    return 0, tonumber(f[1]) or 0, tonumber(f[2]) or 0
  end
  local cancel_requested = f[6] == '1'
  local result_ttl = f[5] and ttl_or(f[5], default_ttl) or default_ttl

  -- lease_owner stays as the owner of the last attempt: the fence also checks
  -- the status, and the next claim overwrites it (one command less per settle).
  -- The active entry goes in one ZREM after the loop; no settle reads it.
  settled[#settled + 1] = id

  if action == 'complete' then
    return finish(job_key, id, STATUS_COMPLETED, result_ttl, 'result_json', text)
  end
  local attempt = tonumber(f[2])  -- not on the common path: a conversion costs
  if action == 'retry' or action == 'fail' then
    record_error(job_key, attempt, error_type, text, traceback)
    if cancel_requested then
      return finish(job_key, id, STATUS_CANCELLED, result_ttl)
    end
    if action == 'fail' or attempt > (tonumber(f[4]) or 0) then
      redis.call('ZADD', dlq_key, now_text, id)
      return finish(job_key, id, STATUS_FAILED, dlq_retention)
    end
    return wait_again(job_key, id, STATUS_RETRYING, now + clamped_delay(delay_ms))
  elseif action == 'cancel' then
    return finish(job_key, id, STATUS_CANCELLED, result_ttl,
      'last_error', text, 'last_error_type', 'Cancelled')
  end
  -- release
  if cancel_requested then
    return finish(job_key, id, STATUS_CANCELLED, result_ttl, 'last_error',
      'cancelled while the orchestrator shut down', 'last_error_type', 'Cancelled')
  end
  -- The released attempt never happened as far as the record is concerned.
  if attempt > 1 then
    redis.call('HSET', job_key, 'attempt', attempt - 1)
    redis.call('HDEL', job_key, 'started_at_ms')
    return wait_again(job_key, id, STATUS_RETRYING, now)
  end
  redis.call('HDEL', job_key, 'attempt', 'started_at_ms')  -- attempt 0 is not stored
  return wait_again(job_key, id, STATUS_PENDING, now)
end

local result = {}
local argv = ARGV  -- a local: every read of ARGV is a global lookup
for i = FIRST, #argv, FIELDS do
  local applied, a, b = settle_one(argv[i], argv[i + 1], argv[i + 2], argv[i + 3],
    argv[i + 4], argv[i + 5], argv[i + 6], argv[i + 7])
  result[#result + 1] = applied
  result[#result + 1] = a
  result[#result + 1] = b
end
-- unpack() has a stack limit: remove in chunks.
for i = 1, #settled, 1000 do
  redis.call('ZREM', active_key, unpack(settled, i, math.min(i + 999, #settled)))
end
return result

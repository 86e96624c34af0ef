-- settle: record how an attempt ended, fenced by (attempt, owner).
--
-- KEYS[1]  job hash         rrq:{<queue>}:job:<id>
-- KEYS[2]  due zset         rrq:{<queue>}:due
-- KEYS[3]  active zset      rrq:{<queue>}:active
-- KEYS[4]  dead-letter zset rrq:{<queue>}:dlq       (score = time of death, ms)
-- ARGV[1]  job id
-- ARGV[2]  attempt (fence token from the claim)
-- ARGV[3]  owner (orchestrator instance id from the claim)
-- ARGV[4]  action:
--            complete  store ARGV[5] as result_json; status COMPLETED
--            retry     another attempt after ARGV[7] ms if retries remain, else dead-letter
--            fail      dead-letter now (fatal error, unknown handler, bad params)
--            cancel    status CANCELLED (the runner stopped the handler on request)
--            release   give the job back without charging the attempt (drain on shutdown)
-- ARGV[5]  result_json (complete) or error message (retry, fail, cancel)
-- ARGV[6]  error type (retry, fail)
-- ARGV[7]  retry delay ms (retry)
-- ARGV[8]  default result TTL ms (used when the job has none)
-- ARGV[9]  dead-letter retention ms
-- ARGV[10] wake channel     rrq:{<queue>}:wake
-- ARGV[11] done channel     rrq:{<queue>}:done:<id>
-- ARGV[12] traceback of the error (retry, fail; may be empty)
--
-- Returns {1, new_status, run_at_ms_or_0} when applied, or
--         {0, current_status, current_attempt} when the fence did not match
--         (the job is not ACTIVE under this attempt and owner): nothing written.
--
-- Guarantee: terminal statuses absorb; a stale owner never overwrites a newer
-- attempt; every failed attempt is appended to errors_json; a job whose
-- cancellation was requested ends CANCELLED unless its handler completed;
-- every terminal transition publishes on the done channel so waiters wake
-- without polling.
local job_key = KEYS[1]
local due_key = KEYS[2]
local active_key = KEYS[3]
local dlq_key = KEYS[4]

local STATUS_PENDING = 1
local STATUS_ACTIVE = 2
local STATUS_RETRYING = 3
local STATUS_COMPLETED = 4
local STATUS_FAILED = 5
local STATUS_CANCELLED = 6
local MAX_ERRORS = 100

local id = ARGV[1]
local action = ARGV[4]
local ACTIONS = {complete = true, retry = true, fail = true, cancel = true, release = true}
if not ACTIONS[action] then
  return redis.error_reply('RRQ_INVALID_ARGUMENT unknown settle action ' .. tostring(action))
end

local f = redis.call('HMGET', job_key, 'status', 'attempt', 'lease_owner', 'max_retries',
  'result_ttl_ms', 'cancel_requested')
local status = tonumber(f[1])
if status ~= STATUS_ACTIVE or f[2] ~= ARGV[2] or f[3] ~= ARGV[3] then
  return {0, status or 0, tonumber(f[2]) or 0}
end
local attempt = tonumber(f[2])
local cancel_requested = f[6] == '1'
local result_ttl = tonumber(f[5]) or tonumber(ARGV[8])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- lease_owner stays as the owner of the last attempt: the fence also checks
-- the status, and the next claim overwrites it (one command less per settle).
redis.call('ZREM', active_key, id)

-- Appends one failed attempt to errors_json and sets last_error/last_error_type.
local function record_error(message, error_type)
  local history = {}
  local raw = redis.call('HGET', job_key, 'errors_json')
  if raw then
    local ok, decoded = pcall(cjson.decode, raw)
    if ok and type(decoded) == 'table' then history = decoded end
  end
  table.insert(history, {attempt = attempt, error_type = error_type, message = message,
    traceback = ARGV[12] or '', at_ms = now})
  while #history > MAX_ERRORS do table.remove(history, 1) end
  redis.call('HSET', job_key, 'errors_json', cjson.encode(history),
    'last_error', message, 'last_error_type', error_type)
end

-- `...` are more field/value pairs written in the same HSET.
local function finish(new_status, ttl_ms, ...)
  redis.call('HSET', job_key, 'status', new_status, 'finished_at_ms', now, ...)
  redis.call('PEXPIRE', job_key, ttl_ms)
  redis.call('PUBLISH', ARGV[11], new_status)
  return {1, new_status, 0}
end

local function wait_again(new_status, run_at)
  redis.call('HSET', job_key, 'status', new_status, 'run_at_ms', run_at)
  redis.call('ZADD', due_key, run_at, id)
  redis.call('PUBLISH', ARGV[10], run_at)
  return {1, new_status, run_at}
end

local function dead_letter()
  redis.call('ZADD', dlq_key, now, id)
  return finish(STATUS_FAILED, tonumber(ARGV[9]))
end

if action == 'complete' then
  return finish(STATUS_COMPLETED, result_ttl, 'result_json', ARGV[5])
elseif action == 'retry' or action == 'fail' then
  record_error(ARGV[5], ARGV[6])
  if cancel_requested then
    return finish(STATUS_CANCELLED, result_ttl)
  end
  if action == 'fail' or attempt > (tonumber(f[4]) or 0) then
    return dead_letter()
  end
  return wait_again(STATUS_RETRYING, now + tonumber(ARGV[7]))
elseif action == 'cancel' then
  return finish(STATUS_CANCELLED, result_ttl, 'last_error', ARGV[5], 'last_error_type', 'Cancelled')
elseif action == 'release' then
  if cancel_requested then
    return finish(STATUS_CANCELLED, result_ttl, 'last_error',
      'cancelled while the orchestrator shut down', 'last_error_type', 'Cancelled')
  end
  -- The released attempt never happened as far as the record is concerned.
  redis.call('HSET', job_key, 'attempt', attempt - 1)
  redis.call('HDEL', job_key, 'started_at_ms')
  if attempt - 1 > 0 then
    return wait_again(STATUS_RETRYING, now)
  end
  return wait_again(STATUS_PENDING, now)
end

-- enqueue: write a new job record and schedule it in its queue, atomically.
--
-- KEYS[1]  job hash        rrq:{<queue>}:job:<id>
-- KEYS[2]  due zset        rrq:{<queue>}:due
-- ARGV[1]  job id
-- ARGV[2]  function_name
-- ARGV[3]  queue_name
-- ARGV[4]  params_json (UTF-8 JSON text of an object)
-- ARGV[5]  max_retries            (integer >= 0)
-- ARGV[6]  job_timeout_ms         (integer >= 0; 0 = orchestrator default)
-- ARGV[7]  result_ttl_ms          (integer >= 0; 0 = orchestrator default)
-- ARGV[8]  defer_ms               (integer >= 0, relative to Redis TIME)
-- ARGV[9]  run_at_ms              (integer >= 0, absolute; 0 = none)
-- ARGV[10] trace_parent
-- ARGV[11] trace_state
-- ARGV[12] max_params_bytes
-- ARGV[13] wake channel           rrq:{<queue>}:wake
--
-- Returns {1, job_id, run_at_ms} when the job was written, or
--         {0, job_id, status} when a job with this id already exists (nothing written).
-- Errors (nothing written): RRQ_PAYLOAD_TOO_LARGE, RRQ_INVALID_PARAMS, RRQ_INVALID_ARGUMENT.
--
-- Guarantee: either the whole record and its due entry are written, or nothing is.
-- The clock is Redis TIME, so a producer's clock never decides when a job runs.
local job_key = KEYS[1]
local due_key = KEYS[2]

local STATUS_PENDING = 1

local function nonneg_int(name, value)
  local n = tonumber(value)
  if n == nil or n < 0 or n ~= math.floor(n) then
    return redis.error_reply('RRQ_INVALID_ARGUMENT ' .. name .. ' must be a non-negative integer, got ' .. tostring(value))
  end
  return n
end

local params = ARGV[4]
local limit = nonneg_int('max_params_bytes', ARGV[12])
if type(limit) == 'table' then return limit end
if #params > limit then
  return redis.error_reply('RRQ_PAYLOAD_TOO_LARGE params are ' .. #params .. ' bytes, the limit is ' .. limit)
end
if not string.find(params, '^%s*{') then
  return redis.error_reply('RRQ_INVALID_PARAMS params must be a JSON object')
end
local ok = pcall(cjson.decode, params)
if not ok then
  return redis.error_reply('RRQ_INVALID_PARAMS params are not valid JSON')
end
if ARGV[2] == '' then
  return redis.error_reply('RRQ_INVALID_ARGUMENT function_name must not be empty')
end

local numbers = {}
for i, name in ipairs({'max_retries', 'job_timeout_ms', 'result_ttl_ms', 'defer_ms', 'run_at_ms'}) do
  local n = nonneg_int(name, ARGV[4 + i])
  if type(n) == 'table' then return n end
  numbers[name] = n
end

local existing = redis.call('HGET', job_key, 'status')
if existing then
  return {0, ARGV[1], tonumber(existing)}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local run_at = math.max(now + numbers['defer_ms'], numbers['run_at_ms'])

local fields = {
  'id', ARGV[1],
  'function_name', ARGV[2],
  'queue_name', ARGV[3],
  'params_json', params,
  'status', STATUS_PENDING,
  'attempt', 0,
  'max_retries', numbers['max_retries'],
  'enqueued_at_ms', now,
  'run_at_ms', run_at,
}
if numbers['job_timeout_ms'] > 0 then
  table.insert(fields, 'job_timeout_ms'); table.insert(fields, numbers['job_timeout_ms'])
end
if numbers['result_ttl_ms'] > 0 then
  table.insert(fields, 'result_ttl_ms'); table.insert(fields, numbers['result_ttl_ms'])
end
if ARGV[10] ~= '' then
  table.insert(fields, 'trace_parent'); table.insert(fields, ARGV[10])
end
if ARGV[11] ~= '' then
  table.insert(fields, 'trace_state'); table.insert(fields, ARGV[11])
end
redis.call('HSET', job_key, unpack(fields))
redis.call('ZADD', due_key, run_at, ARGV[1])
redis.call('PUBLISH', ARGV[13], run_at)
return {1, ARGV[1], run_at}

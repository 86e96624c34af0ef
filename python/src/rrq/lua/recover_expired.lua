-- recover_expired: give back jobs whose lease expired (their owner died or was cut off).
--
-- KEYS[1]  active zset      rrq:{<queue>}:active
-- KEYS[2]  due zset         rrq:{<queue>}:due
-- KEYS[3]  dead-letter zset rrq:{<queue>}:dlq
-- KEYS[4]  job key prefix   rrq:{<queue>}:job:
-- ARGV[1]  max jobs to recover in this call (bounds the script's work)
-- ARGV[2]  dead-letter retention ms
-- ARGV[3]  wake channel     rrq:{<queue>}:wake
-- ARGV[4]  done channel prefix rrq:{<queue>}:done:
-- ARGV[5]  default result TTL ms (for jobs that end CANCELLED)
--
-- Returns {requeued, dead_lettered, cancelled}.
--
-- Guarantee: an expired attempt counts as a failed attempt (so a job that
-- keeps killing its owner cannot loop forever) and is appended to errors_json:
-- it is retried at once while retries remain and dead-lettered otherwise; a
-- job whose cancellation was requested ends CANCELLED. Its attempt number
-- stays, so the lost owner's late settle is rejected by the fence.
local active_key = KEYS[1]
local due_key = KEYS[2]
local dlq_key = KEYS[3]
local job_prefix = KEYS[4]

local STATUS_ACTIVE = 2
local STATUS_RETRYING = 3
local STATUS_FAILED = 5
local STATUS_CANCELLED = 6
local MAX_ERRORS = 100
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

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local requeued, dead, cancelled = 0, 0, 0
local ids = redis.call('ZRANGEBYSCORE', active_key, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  local key = job_prefix .. id
  redis.call('ZREM', active_key, id)
  local f = redis.call('HMGET', key, 'status', 'attempt', 'max_retries', 'lease_owner',
    'cancel_requested', 'errors_json', 'result_ttl_ms')
  if tonumber(f[1]) == STATUS_ACTIVE then
    local attempt = tonumber(f[2]) or 0
    local message = 'lease expired: owner ' .. (f[4] or '?') .. ' was lost during attempt ' .. attempt
    local history = history_with(f[6], {attempt = attempt, error_type = 'LeaseExpired',
      message = message, traceback = '', at_ms = now})
    redis.call('HSET', key, 'errors_json', history, 'last_error', message,
      'last_error_type', 'LeaseExpired')
    redis.call('HDEL', key, 'lease_owner')
    if f[5] == '1' then
      redis.call('HSET', key, 'status', STATUS_CANCELLED, 'finished_at_ms', now)
      redis.call('PEXPIRE', key, ttl_or(f[7], ARGV[5]))
      redis.call('PUBLISH', ARGV[4] .. id, STATUS_CANCELLED)
      cancelled = cancelled + 1
    elseif attempt > (tonumber(f[3]) or 0) then
      redis.call('HSET', key, 'status', STATUS_FAILED, 'finished_at_ms', now)
      redis.call('ZADD', dlq_key, now, id)
      redis.call('PEXPIRE', key, ARGV[2])
      redis.call('PUBLISH', ARGV[4] .. id, STATUS_FAILED)
      dead = dead + 1
    else
      redis.call('HSET', key, 'status', STATUS_RETRYING, 'run_at_ms', now)
      redis.call('ZADD', due_key, now, id)
      requeued = requeued + 1
    end
  end
end
if requeued > 0 then
  redis.call('PUBLISH', ARGV[3], now)
end
return {requeued, dead, cancelled}

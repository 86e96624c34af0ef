-- cancel: cancel a job that has not finished.
--
-- KEYS[1]  job hash         rrq:{<queue>}:job:<id>
-- KEYS[2]  due zset         rrq:{<queue>}:due
-- ARGV[1]  job id
-- ARGV[2]  reason, kept as last_error
-- ARGV[3]  default result TTL ms (used when the job has none)
-- ARGV[4]  done channel     rrq:{<queue>}:done:<id>
-- ARGV[5]  cancel channel   rrq:{<queue>}:cancel
--
-- Returns {1, CANCELLED}      a waiting job (PENDING or RETRYING) is now CANCELLED and will never run;
--         {2, ACTIVE}         an attempt is running: cancel_requested is set and the
--                             owning orchestrator is told on the cancel channel; the
--                             attempt's outcome ends the job CANCELLED (unless it completed);
--         {0, status}         the job had already finished: nothing written;
--         {-1, 0}             no such job.
local job_key = KEYS[1]
local due_key = KEYS[2]

local STATUS_PENDING = 1
local STATUS_ACTIVE = 2
local STATUS_RETRYING = 3
local STATUS_CANCELLED = 6
-- BEGIN generated limits: MAX_DURATION_MS (rust/rrq-store/limits.toml; make gen)
local MAX_DURATION_MS = 315360000000
-- END generated limits

-- BEGIN generated helpers: ttl_or (rust/rrq-store/lua/lib; make gen)
-- The record's own TTL when Redis can apply it, else the default (text, as
-- PEXPIRE takes it). A record planted by hand or written before ranges were
-- checked must not fail the script half-way: PEXPIRE refuses a time past
-- 2^63 ms and text such as '1e3', and a script's writes before an error stay.
local function ttl_or(value, default)
  local n = tonumber(value)
  if n and n >= 1 and n <= MAX_DURATION_MS and n % 1 == 0 then return string.format('%d', n) end
  return default
end
-- END generated helpers

local f = redis.call('HMGET', job_key, 'status', 'result_ttl_ms')
local status = tonumber(f[1])
if status == nil then
  return {-1, 0}
end

if status == STATUS_PENDING or status == STATUS_RETRYING then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREM', due_key, ARGV[1])
  redis.call('HSET', job_key, 'status', STATUS_CANCELLED, 'finished_at_ms', now,
    'last_error', ARGV[2], 'last_error_type', 'Cancelled')
  redis.call('PEXPIRE', job_key, ttl_or(f[2], ARGV[3]))
  redis.call('PUBLISH', ARGV[4], STATUS_CANCELLED)
  return {1, STATUS_CANCELLED}
elseif status == STATUS_ACTIVE then
  redis.call('HSET', job_key, 'cancel_requested', 1)
  redis.call('PUBLISH', ARGV[5], ARGV[1])
  return {2, STATUS_ACTIVE}
end
return {0, status}

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
  redis.call('PEXPIRE', job_key, tonumber(f[2]) or tonumber(ARGV[3]))
  redis.call('PUBLISH', ARGV[4], STATUS_CANCELLED)
  return {1, STATUS_CANCELLED}
elseif status == STATUS_ACTIVE then
  redis.call('HSET', job_key, 'cancel_requested', 1)
  redis.call('PUBLISH', ARGV[5], ARGV[1])
  return {2, STATUS_ACTIVE}
end
return {0, status}

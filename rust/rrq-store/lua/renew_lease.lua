-- renew_lease: extend the leases an orchestrator holds on its running jobs.
--
-- KEYS[1]  active zset      rrq:{<queue>}:active
-- KEYS[2]  job key prefix   rrq:{<queue>}:job:
-- ARGV[1]  owner: id of the orchestrator instance that claims to hold the leases
-- ARGV[2]  lease_ms
-- ARGV[3], ARGV[4], ...  pairs of (job id, attempt)
--
-- Returns {lost, cancel_requested}: two lists of job ids.
--   lost: the lease is no longer this owner's (the job moved on, was recovered
--     by another orchestrator, or is a newer attempt). The caller must stop
--     those executions: their outcomes will be rejected.
--   cancel_requested: still this owner's, but a user asked to cancel them (a
--     backstop for a missed message on the cancel channel).
local active_key = KEYS[1]
local job_prefix = KEYS[2]

local STATUS_ACTIVE = 2

local owner = ARGV[1]
local lease_ms = tonumber(ARGV[2])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local lost, cancelled = {}, {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local f = redis.call('HMGET', job_prefix .. id, 'status', 'attempt', 'lease_owner', 'cancel_requested')
  if tonumber(f[1]) == STATUS_ACTIVE and f[2] == ARGV[i + 1] and f[3] == owner then
    redis.call('ZADD', active_key, 'XX', now + lease_ms, id)
    if f[4] == '1' then
      table.insert(cancelled, id)
    end
  else
    table.insert(lost, id)
  end
end
return {lost, cancelled}

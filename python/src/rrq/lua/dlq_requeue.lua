-- dlq_requeue: move dead-lettered jobs back to their queue with a fresh attempt budget.
--
-- KEYS[1]  dead-letter zset rrq:{<queue>}:dlq
-- KEYS[2]  due zset         rrq:{<queue>}:due
-- KEYS[3]  job key prefix   rrq:{<queue>}:job:
-- ARGV[1]  wake channel     rrq:{<queue>}:wake
-- ARGV[2]  most jobs to requeue when no ids are given (oldest first)
-- ARGV[3], ...  job ids to requeue; none = the oldest ARGV[2] entries
--
-- Returns {requeued, pruned}: pruned counts dead-letter entries whose record
-- had already expired (they are removed).
--
-- Guarantee: a requeued job is PENDING with attempt 0 and runs as if newly
-- enqueued (due now, no TTL); its errors_json history is kept.
local dlq_key = KEYS[1]
local due_key = KEYS[2]
local job_prefix = KEYS[3]

local STATUS_PENDING = 1
local STATUS_FAILED = 5

local ids = {}
if #ARGV >= 3 then
  for i = 3, #ARGV do table.insert(ids, ARGV[i]) end
else
  ids = redis.call('ZRANGE', dlq_key, 0, tonumber(ARGV[2]) - 1)
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local requeued, pruned = 0, 0
for _, id in ipairs(ids) do
  if redis.call('ZSCORE', dlq_key, id) then
    local key = job_prefix .. id
    local status = tonumber(redis.call('HGET', key, 'status'))
    redis.call('ZREM', dlq_key, id)
    if status == STATUS_FAILED then
      redis.call('HSET', key, 'status', STATUS_PENDING, 'run_at_ms', now)
      redis.call('HDEL', key, 'attempt', 'finished_at_ms', 'started_at_ms', 'cancel_requested')
      redis.call('PERSIST', key)
      redis.call('ZADD', due_key, now, id)
      requeued = requeued + 1
    elseif status == nil then
      pruned = pruned + 1
    end
  end
end
if requeued > 0 then
  redis.call('PUBLISH', ARGV[1], now)
end
return {requeued, pruned}

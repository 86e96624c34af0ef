-- dlq_purge: delete dead-lettered jobs for good.
--
-- KEYS[1]  dead-letter zset rrq:{<queue>}:dlq
-- KEYS[2]  job key prefix   rrq:{<queue>}:job:
-- ARGV[1]  most jobs to delete when no ids are given (oldest first)
-- ARGV[2], ...  job ids to delete; none = the oldest ARGV[1] entries
--
-- Returns the number of dead-letter entries removed.
--
-- Guarantee: only FAILED records are deleted; an entry whose record is gone is
-- just removed. The work per call is bounded by ARGV[1] or the ids given.
local dlq_key = KEYS[1]
local job_prefix = KEYS[2]

local STATUS_FAILED = 5

local ids = {}
if #ARGV >= 2 then
  for i = 2, #ARGV do table.insert(ids, ARGV[i]) end
else
  ids = redis.call('ZRANGE', dlq_key, 0, tonumber(ARGV[1]) - 1)
end

local removed = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', dlq_key, id) == 1 then
    local key = job_prefix .. id
    if tonumber(redis.call('HGET', key, 'status')) == STATUS_FAILED then
      redis.call('DEL', key)
    end
    removed = removed + 1
  end
end
return removed

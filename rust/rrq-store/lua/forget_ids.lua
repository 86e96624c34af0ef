-- forget_ids: drop id-registry entries whose record is gone.
--
-- KEYS[1]    id registry    rrq:ids   hash: job id -> key of the record holding it
-- KEYS[2..]  record keys, one per id, as the registry named them
-- ARGV[1..]  job ids, in the order of KEYS[2..]
--
-- Returns the number of entries dropped.
--
-- Guarantee: an entry is dropped only while it still names the record passed
-- for it and that record does not exist, so an id enqueued again meanwhile
-- keeps its new entry. The registry is read by the caller (HSCAN) and this
-- script only re-checks what it was given: its work is bounded by its ARGV.
-- Why: a record expires by its TTL (or is purged) without touching the
-- registry, which would otherwise grow by one entry per chosen id forever.
local registry_key = KEYS[1]
if #KEYS ~= #ARGV + 1 then
  return redis.error_reply('RRQ_INVALID_ARGUMENT forget_ids takes one record key per id, got '
    .. (#KEYS - 1) .. ' keys for ' .. #ARGV .. ' ids')
end
local dropped = 0
for i, id in ipairs(ARGV) do
  local record = KEYS[i + 1]
  if redis.call('HGET', registry_key, id) == record and redis.call('EXISTS', record) == 0 then
    redis.call('HDEL', registry_key, id)
    dropped = dropped + 1
  end
end
return dropped

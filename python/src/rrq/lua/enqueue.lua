-- enqueue: write a new job record and schedule it in its queue, atomically,
-- applying at most one of the unique / rate-limit / debounce rules.
--
-- KEYS[1]  job hash        rrq:{<queue>}:job:<id>
-- KEYS[2]  due zset        rrq:{<queue>}:due
-- KEYS[3]  rule key        (only with a rule; see ARGV[14])
--                          unique:     rrq:{<queue>}:unique:<key>     string: job id
--                          rate_limit: rrq:{<queue>}:rate_limit:<key> string: job id
--                          debounce:   rrq:{<queue>}:debounce:<key>   hash: job_id, first_at_ms
-- KEYS[4]  job key prefix  rrq:{<queue>}:job:   (with every rule)
-- KEYS[r]  id registry     rrq:ids   hash: job id -> key of the record holding
--                          it; only when the caller chose the id (r = 3
--                          without a rule, 5 with one)
-- KEYS[r+1] (optional) the record key a {6, key, 0} reply named, passed back
--                          so that this call may look at it
-- ARGV[1]  job id
-- ARGV[2]  function_name
-- ARGV[3]  queue_name (unused here: the queue is in every key; kept for a stable call)
-- ARGV[4]  params_json (UTF-8 JSON text of an object)
-- ARGV[5]  max_retries            (integer 0..MAX_RETRIES)
-- ARGV[6]  job_timeout_ms         (integer 0..MAX_DURATION_MS; 0 = orchestrator default)
-- ARGV[7]  result_ttl_ms          (integer 0..MAX_DURATION_MS; 0 = orchestrator default)
-- ARGV[8]  defer_ms               (integer 0..MAX_DURATION_MS, relative to Redis TIME)
-- ARGV[9]  run_at_ms              (integer >= 0, absolute, at most MAX_DURATION_MS
--                                  after Redis TIME; 0 = none)
-- ARGV[10] trace_parent
-- ARGV[11] trace_state
-- ARGV[12] max_params_bytes
-- ARGV[13] wake channel           rrq:{<queue>}:wake
-- ARGV[14] rule: '' (none), 'unique', 'rate_limit' or 'debounce'
-- ARGV[15] rule key as the user gave it (stored in the record)
-- ARGV[16] rule window ms: unique TTL, rate-limit window, or debounce delay
--          (integer 1..MAX_DURATION_MS)
-- ARGV[17] debounce max wait ms (integer 0..MAX_DURATION_MS; 0 = no cap)
-- ARGV[18..] more jobs, without a rule: pairs of (job id, params_json) that
--          share every other argument (enqueue_many). Their job hashes are
--          KEYS[1]'s prefix .. id, in the same hash slot.
--
-- Returns {1, job_id, run_at_ms}   the job was written;
--         {0, job_id, status}      a job with this id already exists (nothing written);
--         {2, existing_id, status} unique: the key is held by that job (nothing written);
--         {3, '', 0}               rate_limit: the window is still closed (nothing written);
--         {4, existing_id, run_at} debounce: the waiting job got these params and run time;
--         {5, job_id, status}      the registry's record of this id, in another
--                                  queue (KEYS[r+1]), exists (nothing written);
--         {6, record_key, 0}       the registry names a record in another queue
--                                  that this call was not given: call again with
--                                  it as KEYS[r+1] (nothing written).
-- With more jobs: {run_at_ms, s1, s2, ...}, one s per job in order (ARGV[1]
-- first, then each pair): 0 when it was written, else the status number of
-- the job that already had its id (nothing written for it). Integers only:
-- the caller knows the ids, and parsing them back costs it more than the
-- script's own work.
-- Errors (nothing written): RRQ_PAYLOAD_TOO_LARGE, RRQ_INVALID_PARAMS, RRQ_INVALID_ARGUMENT
-- (which names the argument and its range).
--
-- Guarantee: every input is validated before the first write; then either the
-- whole record, its due entry, its rule key and its registry entry are
-- written, or nothing is. With the registry, a chosen id names at most one
-- job across all queues of the prefix: the check and the write are one script.
-- (The registry is one key outside the queue's hash slot: on Redis Cluster the
-- rule is per queue; see docs/guarantees.md.)
-- With more jobs, each is written or found existing on its own, as if
-- enqueued one after another at the same Redis time.
-- The clock is Redis TIME, so a producer's clock never decides when a job runs.
local job_key = KEYS[1]
local due_key = KEYS[2]
local rule_key = KEYS[3]
local job_prefix = KEYS[4]

local STATUS_PENDING = 1
local STATUS_PENDING_TEXT = '1'
-- BEGIN generated limits: MAX_RETRIES MAX_DURATION_MS (rust/rrq-store/limits.toml; make gen)
local MAX_RETRIES = 10000
local MAX_DURATION_MS = 315360000000
-- END generated limits

-- BEGIN generated helpers: num_text (rust/rrq-store/lua/lib; make gen)
-- A number as redis.call would write it ('%.17g'), by the integer path where
-- that is the same text: glibc's '%.17g' costs about ten times its '%d'.
local function num_text(n)
  if n % 1 == 0 and n > -2^53 and n < 2^53 then return string.format('%d', n) end
  return string.format('%.17g', n)
end
-- END generated helpers

-- The value as a non-negative integer, else nil. n % 1 is NaN for NaN and
-- the infinities (tonumber reads 'nan' and 'inf'), so one test refuses
-- fractions and both. A nil, not an error reply: telling a table from a
-- number costs a type() call, and Lua function calls are what scripts pay for.
local function nonneg_int(value)
  local n = tonumber(value)
  if n and n >= 0 and n % 1 == 0 then return n end
  return nil
end
local function not_nonneg_int(name, value)
  return redis.error_reply('RRQ_INVALID_ARGUMENT ' .. name .. ' must be a non-negative integer, got ' .. tostring(value))
end
local function over(name, value, max)
  return redis.error_reply('RRQ_INVALID_ARGUMENT ' .. name .. ' must be at most ' .. max .. ', got ' .. tostring(value))
end

local params = ARGV[4]
local limit = nonneg_int(ARGV[12])
if not limit then return not_nonneg_int('max_params_bytes', ARGV[12]) end

-- cjson also accepts NaN and Infinity, which JSON does not have and which
-- most runners cannot decode: refuse them here, where every producer passes.
local function finite(v)
  local kind = type(v)
  if kind == 'number' then
    return v == v and v ~= math.huge and v ~= -math.huge
  end
  if kind == 'table' then
    for _, x in pairs(v) do
      if not finite(x) then return false end
    end
  end
  return true
end
-- An error reply when a job's id or params are not acceptable, else nil.
local function invalid_job(id, text)
  if #text > limit then
    return redis.error_reply('RRQ_PAYLOAD_TOO_LARGE params are ' .. #text .. ' bytes, the limit is ' .. limit)
  end
  if not string.find(text, '^%s*{') then
    return redis.error_reply('RRQ_INVALID_PARAMS params must be a JSON object')
  end
  local ok, decoded = pcall(cjson.decode, text)
  if not ok then
    return redis.error_reply('RRQ_INVALID_PARAMS params are not valid JSON')
  end
  if not finite(decoded) then
    return redis.error_reply('RRQ_INVALID_PARAMS params hold NaN or Infinity, which JSON does not allow')
  end
  if id == '' then
    return redis.error_reply('RRQ_INVALID_ARGUMENT job id must not be empty')
  end
  return nil
end

local FIRST_MORE = 18
local function invalid_jobs()
  local err = invalid_job(ARGV[1], params)
  if err then return err end
  if (#ARGV - FIRST_MORE + 1) % 2 ~= 0 then
    return redis.error_reply('RRQ_INVALID_ARGUMENT more jobs come as (job id, params) pairs')
  end
  for i = FIRST_MORE, #ARGV, 2 do
    err = invalid_job(ARGV[i], ARGV[i + 1])
    if err then return err end
  end
  return nil
end
local err = invalid_jobs()
if err then return err end
if ARGV[2] == '' then
  return redis.error_reply('RRQ_INVALID_ARGUMENT function_name must not be empty')
end

-- ARGV[5..9]. Plain locals: the table and loop these were read through
-- were a tenth of a plain enqueue's script instructions (make bench-lua).
local max_retries = nonneg_int(ARGV[5])
local job_timeout_ms = nonneg_int(ARGV[6])
local result_ttl_ms = nonneg_int(ARGV[7])
local defer_ms = nonneg_int(ARGV[8])
local run_at_arg = nonneg_int(ARGV[9])
if not (max_retries and job_timeout_ms and result_ttl_ms and defer_ms and run_at_arg) then
  for i, name in ipairs({'max_retries', 'job_timeout_ms', 'result_ttl_ms', 'defer_ms', 'run_at_ms'}) do
    if not nonneg_int(ARGV[4 + i]) then return not_nonneg_int(name, ARGV[4 + i]) end
  end
end
-- Above these, Redis could not expire the record (PEXPIRE refuses a time
-- past 2^63 ms) and readers could not parse it back: refused here, before
-- the first write, whichever producer sent them.
if max_retries > MAX_RETRIES then return over('max_retries', ARGV[5], MAX_RETRIES) end
if job_timeout_ms > MAX_DURATION_MS or result_ttl_ms > MAX_DURATION_MS or defer_ms > MAX_DURATION_MS then
  for i, name in ipairs({'job_timeout_ms', 'result_ttl_ms', 'defer_ms'}) do
    if tonumber(ARGV[5 + i]) > MAX_DURATION_MS then return over(name, ARGV[5 + i], MAX_DURATION_MS) end
  end
end

local rule = ARGV[14] or ''
local window, max_wait = 0, 0
if rule ~= '' and #ARGV >= FIRST_MORE then
  return redis.error_reply('RRQ_INVALID_ARGUMENT a job with a ' .. rule .. ' rule is enqueued alone')
end
if rule ~= '' then
  if rule ~= 'unique' and rule ~= 'rate_limit' and rule ~= 'debounce' then
    return redis.error_reply('RRQ_INVALID_ARGUMENT unknown rule ' .. rule)
  end
  if rule_key == nil or (ARGV[15] or '') == '' then
    return redis.error_reply('RRQ_INVALID_ARGUMENT the ' .. rule .. ' key must not be empty')
  end
  if rule ~= 'rate_limit' and job_prefix == nil then
    return redis.error_reply('RRQ_INVALID_ARGUMENT ' .. rule .. ' needs the job key prefix as KEYS[4]')
  end
  window = nonneg_int(ARGV[16])
  if not window then return not_nonneg_int(rule .. ' window ms', ARGV[16]) end
  if window == 0 then
    return redis.error_reply('RRQ_INVALID_ARGUMENT the ' .. rule .. ' window must be positive')
  end
  if window > MAX_DURATION_MS then return over(rule .. ' window ms', ARGV[16], MAX_DURATION_MS) end
  max_wait = nonneg_int(ARGV[17] or '0')
  if not max_wait then return not_nonneg_int('debounce max wait ms', ARGV[17]) end
  if max_wait > MAX_DURATION_MS then return over('debounce max wait ms', ARGV[17], MAX_DURATION_MS) end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if run_at_arg > now + MAX_DURATION_MS then
  return over('run_at_ms', ARGV[9], 'Redis time + ' .. MAX_DURATION_MS .. ' (' .. num_text(now + MAX_DURATION_MS) .. ')')
end
local run_at = math.max(now + defer_ms, run_at_arg)

-- A new job's record, to run at `run_at`, as HSET's field/value list; its
-- params value is at PARAMS_AT. The id and the queue are in the key, so the
-- hash does not repeat them, and fields at their default are left out
-- (attempt 0; run_at_ms equal to enqueued_at_ms): every field costs memory on
-- each of a backlog's jobs, and a small record fits a smaller allocation.
-- Numbers are made text here: redis.call would format each with '%.17g'
-- anyway, and an all-text list is passed to it as is.
local PARAMS_AT = 4
local function record_fields(text)
  local fields = {
    'function_name', ARGV[2],
    'params_json', text,
    'status', STATUS_PENDING_TEXT,
    'max_retries', num_text(max_retries),
    'enqueued_at_ms', num_text(now),
  }
  local n = #fields
  if run_at ~= now then
    fields[n + 1] = 'run_at_ms'; fields[n + 2] = num_text(run_at); n = n + 2
  end
  if job_timeout_ms > 0 then
    fields[n + 1] = 'job_timeout_ms'; fields[n + 2] = num_text(job_timeout_ms); n = n + 2
  end
  if result_ttl_ms > 0 then
    fields[n + 1] = 'result_ttl_ms'; fields[n + 2] = num_text(result_ttl_ms); n = n + 2
  end
  if ARGV[10] ~= '' then
    fields[n + 1] = 'trace_parent'; fields[n + 2] = ARGV[10]; n = n + 2
  end
  if ARGV[11] ~= '' then
    fields[n + 1] = 'trace_state'; fields[n + 2] = ARGV[11]
  end
  return fields
end

if #ARGV >= FIRST_MORE then
  -- Plain jobs sharing their options: one TIME, one ZADD and one PUBLISH
  -- for the batch, which costs Redis less than a script call per job.
  local prefix = string.sub(job_key, 1, #job_key - #ARGV[1])
  local result, due = {run_at}, {}
  -- Shared: only the params differ. record_fields made its numbers text
  -- once, not on every redis.call (that was a fifth of the batch's cost).
  local fields = record_fields(params)
  local due_at = num_text(run_at)
  local function write(id, text)
    local key = prefix .. id
    local existing = redis.call('HGET', key, 'status')
    if existing then
      result[#result + 1] = tonumber(existing)
      return
    end
    fields[PARAMS_AT] = text
    redis.call('HSET', key, unpack(fields))
    due[#due + 1] = due_at; due[#due + 1] = id
    result[#result + 1] = 0
  end
  write(ARGV[1], params)
  for i = FIRST_MORE, #ARGV, 2 do
    write(ARGV[i], ARGV[i + 1])
  end
  for i = 1, #due, 1000 do  -- unpack() has a stack limit
    redis.call('ZADD', due_key, unpack(due, i, math.min(i + 999, #due)))
  end
  if #due > 0 then redis.call('PUBLISH', ARGV[13], run_at) end
  return result
end

local existing = redis.call('HGET', job_key, 'status')
if existing then
  return {0, ARGV[1], tonumber(existing)}
end

-- A chosen id is registered to the record that holds it. A registry entry
-- naming a record in another queue holds the id while that record exists;
-- the record key reaches this script through KEYS like every other key (the
-- {6} reply hands it to the caller, who calls again with it).
local registry_at = (rule ~= '') and 5 or 3
local registry_key = KEYS[registry_at]
if registry_key then
  local holder = redis.call('HGET', registry_key, ARGV[1])
  if holder and holder ~= job_key then
    if KEYS[registry_at + 1] ~= holder then
      return {6, holder, 0}
    end
    local status = redis.call('HGET', holder, 'status')
    if status then
      return {5, ARGV[1], tonumber(status)}
    end
    -- That record expired or was purged: the id is free again.
  end
end

if rule == 'unique' then
  local holder = redis.call('GET', rule_key)
  if holder then
    -- The holder's record may already have expired (status 0): the key still holds.
    local status = redis.call('HGET', job_prefix .. holder, 'status')
    return {2, holder, tonumber(status) or 0}
  end
elseif rule == 'rate_limit' then
  if redis.call('EXISTS', rule_key) == 1 then
    return {3, '', 0}
  end
elseif rule == 'debounce' then
  local d = redis.call('HMGET', rule_key, 'job_id', 'first_at_ms')
  if d[1] then
    local waiting_key = job_prefix .. d[1]
    -- Only the job this window opened counts: a cancelled one's record may
    -- have expired and its id been reused by an unrelated job.
    local w = redis.call('HMGET', waiting_key, 'status', 'attempt', 'debounce_key')
    if tonumber(w[1]) == STATUS_PENDING and (tonumber(w[2]) or 0) == 0 and w[3] == ARGV[15] then
      -- The window is open: the waiting job takes the newest params and waits again.
      local when = now + window
      if max_wait > 0 then
        when = math.min(when, tonumber(d[2]) + max_wait)
      end
      when = math.max(when, run_at)
      redis.call('HSET', waiting_key, 'params_json', params, 'run_at_ms', when)
      redis.call('ZADD', due_key, when, d[1])
      -- The pointer must outlive the job's new run time (as when it was opened).
      redis.call('PEXPIRE', rule_key, (when - now) + max_wait + 3600000)
      redis.call('PUBLISH', ARGV[13], when)
      return {4, d[1], when}
    end
  end
  -- No open window (none yet, or its job already started): this call opens one.
  local first_run = now + window
  if max_wait > 0 then
    first_run = math.min(first_run, now + max_wait)
  end
  run_at = math.max(first_run, run_at)
end

local fields = record_fields(params)
if rule ~= '' then
  table.insert(fields, rule .. '_key'); table.insert(fields, ARGV[15])
end
redis.call('HSET', job_key, unpack(fields))
if registry_key then redis.call('HSET', registry_key, ARGV[1], job_key) end
local run_at_text = num_text(run_at)
redis.call('ZADD', due_key, run_at_text, ARGV[1])
redis.call('PUBLISH', ARGV[13], run_at_text)

if rule == 'unique' or rule == 'rate_limit' then
  redis.call('SET', rule_key, ARGV[1], 'PX', window)
elseif rule == 'debounce' then
  redis.call('HSET', rule_key, 'job_id', ARGV[1], 'first_at_ms', now)
  -- The pointer only has to outlive the window; a stale one points at a job
  -- that already started, which opens a new window anyway.
  redis.call('PEXPIRE', rule_key, (run_at - now) + max_wait + 3600000)
end
return {1, ARGV[1], run_at}

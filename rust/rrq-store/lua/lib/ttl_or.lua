-- The record's own TTL when Redis can apply it, else the default (text, as
-- PEXPIRE takes it). A record planted by hand or written before ranges were
-- checked must not fail the script half-way: PEXPIRE refuses a time past
-- 2^63 ms and text such as '1e3', and a script's writes before an error stay.
local function ttl_or(value, default)
  local n = tonumber(value)
  if n and n >= 1 and n <= MAX_DURATION_MS and n % 1 == 0 then return string.format('%d', n) end
  return default
end

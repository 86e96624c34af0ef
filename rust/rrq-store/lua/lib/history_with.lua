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

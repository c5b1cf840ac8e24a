-- wrk script for envoy/bench/run.py: sends `Authorization: Bearer <token>` with the tokens of a
-- file (one per line) in rotation, starting at a given offset.
--   wrk ... -s tokens.lua <url> -- <token file> [offset]
local tokens = {}
local index = 1

function init(args)
  local path = args[1]
  for line in io.lines(path) do
    if #line > 0 then
      tokens[#tokens + 1] = "Bearer " .. line
    end
  end
  if #tokens == 0 then
    error("no tokens in " .. path)
  end
  index = (tonumber(args[2] or "0") % #tokens) + 1
end

function request()
  local authorization = tokens[index]
  index = index % #tokens + 1
  return wrk.format(nil, nil, { ["Authorization"] = authorization })
end

-- GET /api/v1/users/current with the access tokens of many users (one per line in $TOKENS),
-- each connection going round them from its own starting point. $DELAY_MS, when set, waits
-- that long before each request (a fixed-rate load for the soak).
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do table.insert(tokens, line) end
local requests_made = 0
local delay_ms = tonumber(os.getenv("DELAY_MS") or "")

function init(args)
  requests_made = math.random(#tokens)
end

function request()
  requests_made = requests_made + 1
  local token = tokens[requests_made % #tokens + 1]
  return wrk.format("GET", "/api/v1/users/current", { ["Authorization"] = "Bearer " .. token })
end

if delay_ms then
  function delay() return delay_ms end
end

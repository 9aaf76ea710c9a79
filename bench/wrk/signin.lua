-- POST /api/v1/auth/login with the right password of a random loaded account
-- (user<n>@bench.example, 0 <= n < $USERS); counts answers by status. $DELAY_MS, when set,
-- waits that long before each request (a trickle of sign-ins).
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

local users = tonumber(os.getenv("USERS"))
local password = os.getenv("PASSWORD")
local delay_ms = tonumber(os.getenv("DELAY_MS") or "")
counts = {}

function init(args)
  math.randomseed(os.time() + id * 7919)
end

function request()
  local n = math.random(0, users - 1)
  local body = string.format('{"email":"user%d@bench.example","password":"%s"}', n, password)
  return wrk.format("POST", "/api/v1/auth/login", { ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
  count_status(status)
end

if delay_ms then
  function delay() return delay_ms end
end

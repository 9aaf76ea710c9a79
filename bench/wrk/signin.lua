-- POST /api/v1/auth/login with the right password of a random loaded account
-- (user<n>@bench.example, 0 <= n < $USERS); counts answers by status. $DELAY_MS, when set,
-- waits that long before each request (a trickle of sign-ins). $RETRY_AFTER=1 makes the
-- clients behave: each shed sign-in (503 with Retry-After) makes one connection wait that
-- long before its next request, as the web app and the SDKs do. wrk tells delay() nothing of
-- the connection it asks for, so the wait goes to the next connection about to send: the
-- number of waits, and so the load, is the same.
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

local users = tonumber(os.getenv("USERS"))
local password = os.getenv("PASSWORD")
local delay_ms = tonumber(os.getenv("DELAY_MS") or "")
local retry_after = os.getenv("RETRY_AFTER") == "1"
local waits = {}
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
  if retry_after and status == 503 then
    local seconds = tonumber(headers["retry-after"] or headers["Retry-After"] or "1") or 1
    table.insert(waits, seconds * 1000)
  end
end

if delay_ms then
  function delay() return delay_ms end
elseif retry_after then
  function delay() return table.remove(waits, 1) or 0 end
end

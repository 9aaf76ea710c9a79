-- POST /api/v1/auth/register with a new address and username each time; counts answers by
-- status.
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

local password = os.getenv("PASSWORD")
local run = os.getenv("RUN_ID") or tostring(os.time())
local made = 0
counts = {}

function request()
  made = made + 1
  local name = string.format("r%s-%d-%d", run, id, made)
  local body = string.format(
    '{"email":"%s@bench.example","username":"%s","password":"%s"}', name, name, password)
  return wrk.format("POST", "/api/v1/auth/register", { ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
  count_status(status)
end

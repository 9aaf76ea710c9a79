-- Shared by the wrk scripts of bench/run.sh: counts answers by status (when the script asks)
-- and writes a JSON summary to $WRK_JSON when the run ends.
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

-- Scripts that count statuses call this from response(); reads do not, to stay cheap.
function count_status(status)
  local key = "s" .. status
  counts[key] = (counts[key] or 0) + 1
end

function done(summary, latency, requests)
  local statuses = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    if c then
      for k, v in pairs(c) do statuses[k] = (statuses[k] or 0) + v end
    end
  end
  local parts = {}
  for k, v in pairs(statuses) do
    table.insert(parts, string.format('"%s":%d', string.sub(k, 2), v))
  end
  local e = summary.errors
  local json = string.format(
    '{"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,' ..
    '"max_ms":%.3f,"non_2xx":%d,"socket_errors":%d,"timeouts":%d,"statuses":{%s}}',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, e.status, e.connect + e.read + e.write, e.timeout,
    table.concat(parts, ","))
  local path = os.getenv("WRK_JSON")
  if path then
    local f = assert(io.open(path, "w"))
    f:write(json, "\n")
    f:close()
  end
  io.write(json, "\n")
end

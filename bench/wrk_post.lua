-- wrk script for bench/serving.py: one fixed request per scenario, results as one JSON line.
--
-- Environment (wrk's Lua has no argv for scripts, and bodies may be binary, so files and env carry them):
--   WRK_METHOD   GET or POST (default GET)
--   WRK_BODY     path of a file holding the exact request body (binary V2 bodies included)
--   WRK_HEADERS  "Name: value" lines separated by newlines
--   WRK_OUT      path where done() writes {"requests", "duration_us", "p50_us", "p99_us", ...}

wrk.method = os.getenv("WRK_METHOD") or "GET"

local body_path = os.getenv("WRK_BODY")
if body_path and body_path ~= "" then
  local f = assert(io.open(body_path, "rb"))
  wrk.body = f:read("*a")
  f:close()
end

for line in (os.getenv("WRK_HEADERS") or ""):gmatch("[^\n]+") do
  local k, v = line:match("^([^:]+):%s*(.*)$")
  if k then wrk.headers[k] = v end
end

function done(summary, latency, requests)
  local e = summary.errors
  local out = assert(io.open(os.getenv("WRK_OUT"), "w"))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"mean_us": %.1f, "max_us": %d, "errors_status": %d, "errors_connect": %d, "errors_read": %d, ' ..
    '"errors_write": %d, "errors_timeout": %d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.status, e.connect, e.read, e.write, e.timeout))
  out:close()
end

-- wrk script for the Bulwark benchmark: POST a chat completion request on every connection,
-- and print a one-line JSON summary (BENCH_JSON ...) that bench.py reads.
--   BENCH_BODY_FILE: the request body (default: a small non-streaming chat request)
local body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'
local path = os.getenv("BENCH_BODY_FILE")
if path then
  local f = io.open(path, "rb")
  if f then
    body = f:read("*a"):gsub("%s+$", "")
    f:close()
  end
end

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors_connect": %d, ' ..
    '"errors_read": %d, "errors_write": %d, "errors_status": %d, "errors_timeout": %d, ' ..
    '"lat_mean_us": %.1f, "lat_p50_us": %d, "lat_p99_us": %d, "lat_max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(99), latency.max))
end

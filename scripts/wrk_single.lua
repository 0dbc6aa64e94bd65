-- wrk load for the single-event path (make bench-ingest): POST /v1/llm/request with a unique
-- request id each time, over 3 tenants x 3 routes x 3 models. With WRK_KEYS="k0,k1,k2" each
-- tenant-i request carries key i (API keys on); without, no key is sent.
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

local keys = {}
for key in string.gmatch(os.getenv("WRK_KEYS") or "", "[^,]+") do
  keys[#keys + 1] = key
end
local run = os.time()
local n = 0

function request()
  n = n + 1
  local t, r, m = n % 3, math.floor(n / 3) % 3, math.floor(n / 9) % 3
  local body = string.format(
    '{"request_id":"wrk-%d-%d-%d","tenant_id":"tenant-%d","route":"/route-%d","model":"model-%d","timestamp":"%s","prompt_tokens":%d}',
    run, tid, n, t, r, m, os.date("!%Y-%m-%dT%H:%M:%SZ"), 100 + n % 900)
  local headers = { ["Content-Type"] = "application/json" }
  if #keys > 0 then
    headers["Authorization"] = "Bearer " .. keys[t + 1]
  end
  return wrk.format("POST", "/v1/llm/request", headers, body)
end

function done(summary, latency, requests)
  local l = latency
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %.3f, "requests_per_sec": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "errors": %d, "non2xx": %d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    l:percentile(50) / 1000, l:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end

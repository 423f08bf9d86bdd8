-- wrk script for bench/run.py: one fixed request, re-sent as fast as the connections allow,
-- and a machine-readable summary line at the end.
--
-- Environment (set by bench/run.py):
--   BENCH_METHOD      GET (default) or POST
--   BENCH_TOKEN       sent as "Authorization: Bearer <token>" when set
--   BENCH_BODY_FILE   file whose bytes are the request body (POST), sent with
--                     Content-Type: application/json
-- The URL (and its path) comes from wrk's command line. Re-sending the same upload body is
-- idempotent (PUT = upsert by id, PATCH sets the same values, DELETE of a deleted row is a no-op).
--
-- The static request (wrk.method/headers/body) keeps wrk on its fast path: no per-request Lua.

wrk.method = os.getenv("BENCH_METHOD") or "GET"

local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local body_file = os.getenv("BENCH_BODY_FILE")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end

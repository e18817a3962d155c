-- wrk script: prints one machine-readable line with exact percentiles.
-- wrk keeps every latency at 1 µs resolution, so percentile(99.9) is exact.
-- Usage: wrk ... -s stats.lua URL [-- METHOD BODY]
--   With arguments it sends METHOD with BODY as a form (scenario 8's token requests);
--   other headers (Authorization) come from wrk -H.
-- No response() callback: it would slow wrk down on every request.

init = function(args)
  if args[1] ~= nil and args[1] ~= "" then
    wrk.method = args[1]
  end
  if args[2] ~= nil and args[2] ~= "" then
    wrk.body = args[2]
    wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d p999_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end

-- Prints one machine-readable line at the end of a wrk run; bench/run.py parses it.
-- Usage: wrk -t1 -c50 -d10s --latency -s bench/wrk/report.lua -H 'Authorization: Bearer ...' URL
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.connect, e.read, e.write, e.status, e.timeout))
end

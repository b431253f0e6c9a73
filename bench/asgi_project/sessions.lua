-- wrk script of the ASGI benchmark (bench/asgi_run.py).
--
--   wrk ... -s sessions.lua URL -- COOKIE_FILE SEED
--
-- COOKIE_FILE has one Cookie header value per line (the sessions made by
-- asgi_project/prepare.py). Each request picks one at random, so the sessions are
-- spread over all connections. done() prints one line "HS_WRK_RESULT {json}" with the
-- request count, the errors (status: answers that were not 2xx or 3xx) and the
-- latency percentiles in microseconds, for the harness to read.

local cookies = {}
local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("thread_number", threads)
end

function init(args)
   local path = args[1]
   local seed = tonumber(args[2] or "0") or 0
   for line in io.lines(path) do
      if line ~= "" then
         cookies[#cookies + 1] = line
      end
   end
   if #cookies == 0 then
      error("no cookies in " .. tostring(path))
   end
   -- Each thread runs init() in a Lua state of its own: give each its own sequence.
   math.randomseed(seed * 1000 + (thread_number or 0))
end

function request()
   return wrk.format(nil, nil, { ["Cookie"] = cookies[math.random(#cookies)] })
end

function done(summary, latency, requests)
   io.write(string.format(
      'HS_WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      summary.errors.connect, summary.errors.read, summary.errors.write,
      summary.errors.status, summary.errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end

-- wrk script for `make bench` (bench/run.py runs it; see docs/performance.md).
--
--   wrk -t T -c C -d 10s --latency -s bench/lookup.lua URL -- post BODIES TOKENS
--   wrk -t T -c C -d 10s --latency -s bench/lookup.lua URL -- get
--
-- post: POST to the URL's path with the JSON bodies in the file BODIES (one a line),
--       cycled; each thread starts at its own offset. TOKENS, if given and not "-",
--       is a file of bearer tokens (one a line, one per system client), cycled
--       independently of the bodies, so every client asks every kind of question.
-- get:  GET the URL's path.
--
-- done() prints one line, `BENCH_RESULT {json}`, for bench/run.py to parse:
-- requests, 200 responses, other responses, requests sent but never answered
-- (in flight when wrk stopped, or lost to a socket error), socket errors, and
-- latency percentiles in microseconds.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_number", #threads)
end

function init(args)
   mode = args[1] or "get"
   sent, ok, other = 0, 0, 0
   if mode ~= "post" then
      return
   end
   bodies = {}
   for line in io.lines(args[2]) do
      bodies[#bodies + 1] = line
   end
   -- Threads start far apart in the list, so they do not ask the same questions in step.
   position = math.floor((thread_number - 1) * 0.618 * #bodies) % #bodies
   headers = { ["Content-Type"] = "application/json" }
   tokens = {}
   if args[3] and args[3] ~= "-" then
      for line in io.lines(args[3]) do
         tokens[#tokens + 1] = "Bearer " .. line
      end
   end
   token_position = (thread_number - 1) % math.max(#tokens, 1)
end

function request()
   sent = sent + 1
   if mode ~= "post" then
      return wrk.format("GET")
   end
   position = position % #bodies + 1
   if #tokens > 0 then
      token_position = token_position % #tokens + 1
      headers["Authorization"] = tokens[token_position]
   end
   return wrk.format("POST", nil, headers, bodies[position])
end

function response(status, headers, body)
   if status == 200 then
      ok = ok + 1
   else
      other = other + 1
   end
end

function done(summary, latency, requests)
   local total_sent, total_ok, total_other = 0, 0, 0
   for _, thread in ipairs(threads) do
      total_sent = total_sent + thread:get("sent")
      total_ok = total_ok + thread:get("ok")
      total_other = total_other + thread:get("other")
   end
   local errors = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"duration_us": %d, "requests": %d, "ok": %d, "other_status": %d, '
         .. '"unanswered": %d, "non_2xx": %d, "connect_errors": %d, "read_errors": %d, '
         .. '"write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p95_us": %d, '
         .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.duration, summary.requests, total_ok, total_other,
      total_sent - total_ok - total_other, errors.status, errors.connect, errors.read,
      errors.write, errors.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(95), latency:percentile(99), latency.max, latency.mean
   ))
end

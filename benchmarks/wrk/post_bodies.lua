-- wrk script: POST request bodies read from a file (one JSON body per line), in turn.
--
--   wrk -t1 -c32 -d10s --latency -s benchmarks/wrk/post_bodies.lua URL -- BODIES_FILE
--
-- URL is the full route (http://127.0.0.1:3000/classify or .../v2/models/NAME/infer); the
-- bodies are written by benchmarks/serving_compare.py from real tweets, 1 or 8 texts each.
-- At the end one line "WRK_JSON {...}" carries the counts and latency percentiles (ms) for the
-- script that drives wrk. Each wrk thread has its own Lua state and reads the file itself.

local bodies = {}
local counter = 0

function init(args)
  local path = args[1]
  local file = assert(io.open(path, "r"), "cannot open bodies file " .. tostring(path))
  for line in file:lines() do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  file:close()
  assert(#bodies > 0, "no bodies in " .. path)
  counter = math.random(#bodies) - 1
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[counter])
end

function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_s": %.6f, "non_2xx": %d, "socket_errors": %d, ' ..
    '"timeouts": %d, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "mean_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.status, errors, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.mean / 1000, latency.max / 1000))
end

-- wrk script: POST bodies at a fixed pace per connection, recording every answer's status and
-- latency (an open-loop load whose refusals and acceptances can be told apart).
--
--   wrk -tN -cN -d30s --timeout 30s -s benchmarks/wrk/paced_status.lua URL -- BODIES_FILE PERIOD_S OUT_FILE
--
-- Run with as many threads as connections (-tN -cN): each thread then owns one connection, so
-- a response belongs to the request its thread sent last, and its latency is exact. Each
-- connection sends one request every PERIOD_S seconds (starting at a random phase), so N
-- connections offer N / PERIOD_S requests per second as long as answers take less than
-- PERIOD_S; a connection whose answer came later sends at once and counts the slot as late.
-- BODIES_FILE holds one body per line (sent in turn). OUT_FILE gets one line per answer,
-- "STATUS LATENCY_S", and one line "late N" per thread; a status 0 line is a socket error.

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } dk_timespec;
int clock_gettime(int clock, dk_timespec *ts);
]]
local clock = ffi.new("dk_timespec")
local function now()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end

local bodies, counter, period, slot, sent = {}, 0, 1.0, nil, nil
answers, late, out_file = {}, 0, nil  -- globals: done() reads them through thread:get

function init(args)
  local file = assert(io.open(args[1], "r"), "cannot open bodies file " .. tostring(args[1]))
  for line in file:lines() do
    if #line > 0 then bodies[#bodies + 1] = line end
  end
  file:close()
  assert(#bodies > 0, "no bodies in " .. args[1])
  period = tonumber(args[2])
  out_file = args[3]
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
  counter = math.random(#bodies) - 1
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function delay()
  local t = now()
  if slot == nil then
    slot = t + math.random() * period
  else
    slot = slot + period
  end
  if slot < t then  -- the previous answer took longer than the period
    late = late + 1
    slot = t
  end
  return math.floor((slot - t) * 1000)
end

function request()
  counter = counter % #bodies + 1
  sent = now()
  return wrk.format(nil, nil, nil, bodies[counter])
end

function response(status, headers, body)
  answers[#answers + 1] = string.format("%d %.6f", status, now() - sent)
end

function done(summary, latency, requests)
  -- done() runs in the main Lua state, which init() never saw: the path comes from a thread.
  local out = assert(io.open(threads[1]:get("out_file"), "w"))
  for _, thread in ipairs(threads) do
    for _, line in ipairs(thread:get("answers")) do
      out:write(line, "\n")
    end
    out:write("late ", tostring(thread:get("late")), "\n")
  end
  local e = summary.errors
  out:write(string.format("errors %d %d %d %d %d\n", e.connect, e.read, e.write, e.timeout, e.status))
  out:close()
end

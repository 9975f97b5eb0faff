-- wrk script for bench/gates.sh, the measured mix: the plain signed body of
-- bench/ingest.lua, and every GATE_EVERY-th request (none when 0) the next line of
-- this thread's share of GATE_FILE (written by gates.py: a gated trigger, an e2e
-- that opens a waiting job, or a scan of a new artifact). A unique X-Delivery per
-- request, so every request is a new event. Where each thread is in its share is
-- kept in GATE_POS between runs, so that a later run goes on with new stories.
-- BODY, SIG, GATE_EVERY, GATE_FILE, GATE_POS and THREADS come from the environment.
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  n = 0
  g = 0
  prefix = tostring(tid) .. "-" .. tostring(os.time()) .. "-"
  body = os.getenv("BODY")
  sig = "sha256=" .. os.getenv("SIG")
  every = tonumber(os.getenv("GATE_EVERY") or "0")
  local nthreads = tonumber(os.getenv("THREADS"))
  gates = {}
  if every > 0 then
    for l in io.lines(os.getenv("GATE_FILE")) do
      local story, source, s, b = l:match("^(%d+)\t(%S+)\t(%x+)\t(.*)$")
      if tonumber(story) % nthreads == tid then
        table.insert(gates, { "/hooks/" .. source, "sha256=" .. s, b })
      end
    end
  end
  local pos = io.open(os.getenv("GATE_POS") or "", "r")
  if pos then
    for l in pos:lines() do
      local t, at = l:match("^(%d+) (%d+)$")
      if tonumber(t) == tid then g = tonumber(at) end
    end
    pos:close()
  end
  headers = { ["Content-Type"] = "application/json" }
end
function done(summary, latency, requests)
  local path = os.getenv("GATE_POS")
  if tonumber(os.getenv("GATE_EVERY") or "0") == 0 or not path then return end
  local f = io.open(path, "w")
  for _, t in ipairs(threads) do
    f:write(tostring(t:get("tid")) .. " " .. tostring(t:get("g")) .. "\n")
  end
  f:close()
end
function request()
  n = n + 1
  headers["X-Delivery"] = prefix .. n
  if every > 0 and n % every == 0 and #gates > 0 then
    g = g % #gates + 1
    local r = gates[g]
    headers["X-Signature"] = r[2]
    return wrk.format("POST", r[1], headers, r[3])
  end
  headers["X-Signature"] = sig
  return wrk.format("POST", nil, headers, body)
end

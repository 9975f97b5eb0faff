-- wrk script for bench/gates.sh: sends every line of PRELOAD_FILE (written by
-- gates.py) exactly once, the lines shared among the threads. A thread that has
-- had a 202 for each of its lines stops and leaves a file DONE_DIR/<thread>; the
-- script then interrupts wrk. Until then, a thread with nothing left to send asks
-- GET /readyz, so that its connections stay busy without sending anything twice.
-- The first request of each thread is GET /readyz too: wrk calls request() once on
-- the first thread before the run to check it, and does not send what it returns.
-- PRELOAD_FILE, DONE_DIR and THREADS come from the environment.
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  sent = 0
  acked = 0
  prefix = "preload-" .. tostring(tid) .. "-"
  local nthreads = tonumber(os.getenv("THREADS"))
  lines = {}
  local i = 0
  for l in io.lines(os.getenv("PRELOAD_FILE")) do
    if i % nthreads == tid then
      local source, s, b = l:match("^%d+\t(%S+)\t(%x+)\t(.*)$")
      table.insert(lines, { "/hooks/" .. source, "sha256=" .. s, b })
    end
    i = i + 1
  end
  headers = { ["Content-Type"] = "application/json" }
end
function finish()
  local f = io.open(os.getenv("DONE_DIR") .. "/" .. tostring(tid), "w")
  f:write(tostring(acked) .. "\n")
  f:close()
  wrk.thread:stop()
end
function request()
  sent = sent + 1
  local r = lines[sent - 1]
  if r == nil then
    return wrk.format("GET", "/readyz")
  end
  headers["X-Delivery"] = prefix .. sent
  headers["X-Signature"] = r[2]
  return wrk.format("POST", r[1], headers, r[3])
end
function response(status, headers, body)
  if status == 202 then
    acked = acked + 1
    if acked == #lines then finish() end
  end
end

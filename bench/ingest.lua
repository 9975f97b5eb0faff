-- wrk script: one signed body, a unique X-Delivery per request so every request is
-- a new event (gantry would answer a repeated delivery as a duplicate).
-- BODY and SIG come from the environment (bench/ingest.sh computes them).
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  n = 0
  -- WRK_ID tells apart wrk processes started in the same second (bench/pg.sh).
  prefix = (os.getenv("WRK_ID") or "") .. tostring(tid) .. "-" .. tostring(os.time()) .. "-"
  body = os.getenv("BODY")
  headers = {
    ["Content-Type"] = "application/json",
    ["X-Signature"] = "sha256=" .. os.getenv("SIG"),
  }
end
function request()
  n = n + 1
  headers["X-Delivery"] = prefix .. n
  return wrk.format("POST", nil, headers, body)
end

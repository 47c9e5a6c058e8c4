-- wrk: POST structured CloudEvents, each with an id no other request (thread, run) uses.
-- BATCH (environment) > 0 sends batches of that many; TOKEN becomes the Bearer token;
-- TYPE sets the event type (default com.example.bench).
local threads = {}
local run = tostring(os.time()) .. "-" .. tostring(math.floor(os.clock() * 1e6))

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  prefix = run .. "-" .. tid
  batch = tonumber(os.getenv("BATCH") or "0")
  etype = os.getenv("TYPE") or "com.example.bench"
  wrk.method = "POST"
  local token = os.getenv("TOKEN")
  if token then wrk.headers["Authorization"] = "Bearer " .. token end
  if batch > 0 then
    wrk.headers["Content-Type"] = "application/cloudevents-batch+json"
  else
    wrk.headers["Content-Type"] = "application/cloudevents+json"
  end
end

local function event()
  counter = counter + 1
  return '{"specversion":"1.0","id":"' .. prefix .. "-" .. counter .. '","source":"/bench","type":"' ..
    etype .. '","data":{"amount":42.5,"currency":"EUR"}}'
end

request = function()
  if batch > 0 then
    local items = {}
    for i = 1, batch do items[i] = event() end
    return wrk.format(nil, nil, nil, "[" .. table.concat(items, ",") .. "]")
  end
  return wrk.format(nil, nil, nil, event())
end

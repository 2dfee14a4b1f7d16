-- wrk script: POST /api/v1/repositories with a name no other request uses.
-- The key comes from the environment (BENCH_API_KEY); each thread numbers its own names.
local counter = 0
local threads = {}
local prefix = os.getenv("BENCH_PREFIX") or tostring(os.time())

function setup(thread)
   thread:set("thread_id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   wrk.method = "POST"
   wrk.path = "/api/v1/repositories"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY")
end

function request()
   counter = counter + 1
   local body = string.format('{"name":"r-%s-%d-%d"}', prefix, thread_id, counter)
   return wrk.format(nil, nil, nil, body)
end

-- wrk script: GET /api/v1/repositories/{repo_name} for random names of one organization.
-- BENCH_API_KEY is a key of that organization; its repositories are repo-0000 … repo-NNNN.
local count = tonumber(os.getenv("BENCH_REPO_COUNT"))

function init(args)
   wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY")
   math.randomseed(os.time() + (args[1] and tonumber(args[1]) or 0))
end

function request()
   local path = string.format("/api/v1/repositories/repo-%04d", math.random(0, count - 1))
   return wrk.format("GET", path)
end

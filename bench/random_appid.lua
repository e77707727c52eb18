-- wrk script for bench/read_path.sh: every request is `GET <prefix><appid>`
-- for an appid drawn uniformly at random from a list, so a run touches every
-- account's slot (wxtoken) or file (nginx) instead of one hot one.
--
-- Usage: wrk [options] -s bench/random_appid.lua URL -- APPID_FILE [PREFIX]
--   APPID_FILE  one appid a line (read once per wrk thread)
--   PREFIX      path before the appid (default /v1/token/)
-- Headers given with -H (the wxtoken bearer key) go into every request. The
-- requests are formatted once in init(); per request the script only draws
-- an index, so wrk's own cost per request is the same for every server.

local requests = {}
local count = 0
local threads = 0

function setup(thread)
    threads = threads + 1
    thread:set("thread_no", threads)
end

function init(args)
    local file = args[1]
    if file == nil then
        error("random_appid.lua: pass the appid list after --, e.g. -- appids.txt")
    end
    local prefix = args[2] or "/v1/token/"
    for line in io.lines(file) do
        if #line > 0 then
            count = count + 1
            requests[count] = wrk.format("GET", prefix .. line)
        end
    end
    if count == 0 then
        error("random_appid.lua: no appids in " .. file)
    end
    -- A different sequence per thread and per run.
    math.randomseed(os.time() * 64 + (thread_no or 0))
end

function request()
    return requests[math.random(count)]
end

-- Each request carries the next token of a file (one token per line), round robin, so N distinct tokens are
-- sent in turn. Requests are formatted once in init(), so the per-request cost in wrk is one table lookup.
-- Usage: wrk -t1 -c50 -d10s --latency -s bench/wrk/tokens.lua URL -- TOKEN_FILE [COUNT]
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local requests = {}
local count = 0
local index = 0

function init(args)
   local limit = tonumber(args[2])
   for line in io.lines(args[1]) do
      if limit ~= nil and count >= limit then break end
      count = count + 1
      requests[count] = wrk.format(nil, nil, { Authorization = "Bearer " .. line })
   end
   assert(count > 0, "no tokens in " .. args[1])
end

function request()
   index = index % count + 1
   return requests[index]
end

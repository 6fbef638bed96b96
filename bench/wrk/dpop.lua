-- DPoP (RFC 9449) at cache hit: one token, and each request carries the next proof of a file (one per line), so
-- every proof is fresh (a proof is accepted once). The file must hold at least as many proofs as requests are sent;
-- past its end the proofs repeat and are refused (counted as non-2xx). Requests are formatted once in init().
-- Usage: wrk -t1 -c50 -d10s --latency -s bench/wrk/dpop.lua URL -- PROOF_FILE TOKEN
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local requests = {}
local count = 0
local index = 0

function init(args)
   local authorization = "DPoP " .. args[2]
   for line in io.lines(args[1]) do
      count = count + 1
      requests[count] = wrk.format(nil, nil, { Authorization = authorization, DPoP = line })
   end
   assert(count > 0, "no proofs in " .. args[1])
end

function request()
   index = index % count + 1
   return requests[index]
end

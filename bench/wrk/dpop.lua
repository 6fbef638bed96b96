-- DPoP (RFC 9449) at cache hit: one token, and each request carries the next proof of a file (one per line), so
-- every proof is fresh (a proof is accepted once). The file must hold at least as many proofs as requests are sent;
-- past its end the proofs repeat and are refused (counted as non-2xx).
-- Usage: wrk -t1 -c50 -d10s --latency -s bench/wrk/dpop.lua URL -- PROOF_FILE TOKEN
--
-- Each request is formatted when it is sent, not all of them in init(): LuaJIT 2.1 (Debian's) interns every string
-- and hashes a long one from four 4-byte samples only (start, end, middle, quarter); 100 000 formatted requests that
-- differ only in their proof can then share one hash bucket, and interning them is quadratic (wrk spun for minutes
-- in memcmp). The proofs themselves differ in their last bytes (the signature), so they hash apart.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local proofs = {}
local count = 0
local index = 0
local headers = {}

function init(args)
   headers.Authorization = "DPoP " .. args[2]
   for line in io.lines(args[1]) do
      count = count + 1
      proofs[count] = line
   end
   assert(count > 0, "no proofs in " .. args[1])
end

function request()
   index = index % count + 1
   headers.DPoP = proofs[index]
   return wrk.format(nil, nil, headers)
end

-- Fold in a provider's rate-limit report (BucketPair.learn, GcraCell.learn).
-- ARGV[OP]: seconds since the reported call was admitted (its admission, on the server's clock,
--          is TIME minus that)
-- ARGV[OP+1..OP+4]:  tokens   reported (1/0), remaining, capacity floor, limit per minute (0: none)
-- ARGV[OP+5..OP+8]: requests reported (1/0), remaining, capacity floor, limit per minute (0: none)

local measured_at = now - tonumber(ARGV[OP])
if ARGV[OP + 1] == '1' then
  learn(T, tonumber(ARGV[OP + 2]), measured_at, tonumber(ARGV[OP + 3]), tonumber(ARGV[OP + 4]))
end
if ARGV[OP + 5] == '1' then
  learn(R, tonumber(ARGV[OP + 6]), measured_at, tonumber(ARGV[OP + 7]), tonumber(ARGV[OP + 8]))
end
save()
return reply(1, 0)

-- Fold in a provider's rate-limit report (BucketPair.learn, GcraCell.learn).
-- ARGV[6]: seconds since the reported call was admitted (its admission, on the server's clock,
--          is TIME minus that)
-- ARGV[7..10]:  tokens   reported (1/0), remaining, capacity floor, limit per minute (0: none)
-- ARGV[11..14]: requests reported (1/0), remaining, capacity floor, limit per minute (0: none)

local measured_at = now - tonumber(ARGV[6])
if ARGV[7] == '1' then
  learn(T, tonumber(ARGV[8]), measured_at, tonumber(ARGV[9]), tonumber(ARGV[10]))
end
if ARGV[11] == '1' then
  learn(R, tonumber(ARGV[12]), measured_at, tonumber(ARGV[13]), tonumber(ARGV[14]))
end
save()
return reply(1, 0)

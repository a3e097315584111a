-- Take a cost from both cells of the pair, or from neither (BucketPair.reserve).
-- ARGV[OP..OP+3]: requests, tokens, over_tokens (releasable later), margin (seconds)
-- Reply status 1: taken (wait 0); 0: refused, wait = seconds until it would fit.

local cost_r, cost_t = tonumber(ARGV[OP]), tonumber(ARGV[OP + 1])
local over, margin = tonumber(ARGV[OP + 2]), tonumber(ARGV[OP + 3])

local at = margin + math.max(cooldown, fit_time(R, cost_r), fit_time(T, cost_t))
if at > now then
  if fresh then save() end  -- keep the cold start: it would start again from now
  return reply(0, at - now)
end
anchor = 0
if R.tat <= now then anchor = anchor + 1 end
if T.tat <= now then anchor = anchor + 2 end
charge(R, cost_r, 0)
charge(T, cost_t, over)
admitted_r = admitted_r + cost_r
admitted_t = admitted_t + cost_t
seq = seq + 1
save()
return reply(1, 0)

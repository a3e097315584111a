-- Take a cost from every cell of the pair, or from none (BucketPair.reserve).
-- ARGV[OP..OP+4]: requests, tokens, over_tokens (releasable later), margin (seconds),
-- output tokens
-- Reply status 1: taken (wait 0); 0: refused, wait = seconds until it would fit.

local cost_r, cost_t = tonumber(ARGV[OP]), tonumber(ARGV[OP + 1])
local over, margin = tonumber(ARGV[OP + 2]), tonumber(ARGV[OP + 3])
local cost_o = tonumber(ARGV[OP + 4])

local fit = math.max(cooldown, fit_time(R, cost_r), fit_time(T, cost_t))
for _, c in ipairs(X) do fit = math.max(fit, fit_time(c, amount(c, cost_r, cost_t, cost_o))) end
local at = margin + fit
if at > now then
  if fresh then save() end  -- keep the cold start: it would start again from now
  return reply(0, at - now)
end
behind_r, behind_t = math.max(0, R.tat - now), math.max(0, T.tat - now)
charge(R, cost_r, 0)
charge(T, cost_t, over)
for _, c in ipairs(X) do charge(c, amount(c, cost_r, cost_t, cost_o), c.wt * over) end
admitted_r = admitted_r + cost_r
admitted_t = admitted_t + cost_t
seq = seq + 1
save()
return reply(1, 0)

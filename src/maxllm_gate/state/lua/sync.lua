-- Merge one process's own view of the pair into the shared one, after an outage during
-- which it admitted calls on its own (HybridRateLimiter, back on Redis). Each cell keeps
-- the larger debt, the cooldown the later end: what was charged in Redis before the
-- outage (and the process's memory started from) is not counted twice, and the calls
-- this process admitted alone are counted at least once.
-- ARGV[OP..OP+2]: requests debt, tokens debt, cooldown, as seconds from now; then each
-- extra cell's debt

R.tat = math.max(R.tat, now + tonumber(ARGV[OP]))
T.tat = math.max(T.tat, now + tonumber(ARGV[OP + 1]))
cooldown = math.max(cooldown, now + tonumber(ARGV[OP + 2]))
for k, c in ipairs(X) do c.tat = math.max(c.tat, now + tonumber(ARGV[OP + 2 + k])) end
save()
return reply(1, 0)

-- Apply a finished call's corrections to the pair, in order, in one script
-- (StateBackend.settle): one round trip however many there are.
-- ARGV[OP..]: the corrections, each a name then its arguments:
--   release    tokens                        give back over-reserved tokens (GcraCell.release)
--   adjust     requests, tokens, output      charge positive amounts, refund negative ones
--   cool_down  seconds from now              admit nothing for a while (BucketPair.cool_down)
--   learn      since, then 4 token fields, then 4 request fields: a provider's report
--              (BucketPair.learn) about a call admitted `since` seconds ago (on the server's
--              clock, TIME minus that); each dimension: reported (1/0), remaining,
--              capacity floor, limit per minute (0: none); then the same 4 fields for
--              each extra cell, in order
--   stats      share_stats' 12 arguments (_stats.lua): the key's statistics, on KEYS[2]
--              ("<prefix>:{<key id>}:stats", the same slot), when they are due; the
--              reply then ends with share_stats' answer

local i, changed, shared = OP, false, nil
while i <= #ARGV do
  local name = ARGV[i]
  if name == 'release' then
    local tokens = tonumber(ARGV[i + 1])
    for _, c in ipairs(X) do
      if c.wt ~= 0 then release(c, c.wt * tokens) end
    end
    release(T, tokens)
    i = i + 2
  elseif name == 'adjust' then
    local r, t, o = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    local changes = { { R, r }, { T, t } }
    for _, c in ipairs(X) do changes[#changes + 1] = { c, amount(c, r, t, o) } end
    for _, change in ipairs(changes) do
      local c, delta = change[1], change[2]
      if delta > 0 then
        charge(c, delta, 0)
      elseif delta < 0 then
        refund(c, -delta)
      end
    end
    i = i + 4
  elseif name == 'cool_down' then
    cooldown = math.max(cooldown, now + tonumber(ARGV[i + 1]))
    i = i + 2
  elseif name == 'stats' then
    shared = share_stats(KEYS[2], i + 1, now)
    i = i + 13
  elseif name == 'learn' then
    local measured_at = now - tonumber(ARGV[i + 1])
    for k, c in ipairs({ T, R, unpack(X) }) do
      local at = i + 2 + 4 * (k - 1)
      if ARGV[at] == '1' then
        learn(c, tonumber(ARGV[at + 1]), measured_at, tonumber(ARGV[at + 2]),
          tonumber(ARGV[at + 3]), c.window)
      end
    end
    i = i + 10 + 4 * #X
  else
    return redis.error_reply('settle: unknown correction ' .. tostring(name))
  end
  changed = changed or name ~= 'stats'
end
if changed then save() end
local out = reply(1, 0)
for _, value in ipairs(shared or {}) do out[#out + 1] = value end
return out

-- Apply a finished call's corrections to the pair, in order, in one script
-- (StateBackend.settle): one round trip however many there are.
-- ARGV[OP..]: the corrections, each a name then its arguments:
--   release    tokens                        give back over-reserved tokens (GcraCell.release)
--   adjust     requests, tokens              charge positive amounts, refund negative ones
--   cool_down  seconds from now              admit nothing for a while (BucketPair.cool_down)
--   learn      since, then 4 token fields, then 4 request fields: a provider's report
--              (BucketPair.learn) about a call admitted `since` seconds ago (on the server's
--              clock, TIME minus that); each dimension: reported (1/0), remaining,
--              capacity floor, limit per minute (0: none)
--   stats      share_stats' 12 arguments (_stats.lua): the key's statistics, on KEYS[2]
--              ("<prefix>:{<key id>}:stats", the same slot), when they are due; the
--              reply then ends with share_stats' answer

local i, changed, shared = OP, false, nil
while i <= #ARGV do
  local name = ARGV[i]
  if name == 'release' then
    release(T, tonumber(ARGV[i + 1]))
    i = i + 2
  elseif name == 'adjust' then
    for k, c in ipairs({ R, T }) do
      local amount = tonumber(ARGV[i + k])
      if amount > 0 then
        charge(c, amount, 0)
      elseif amount < 0 then
        refund(c, -amount)
      end
    end
    i = i + 3
  elseif name == 'cool_down' then
    cooldown = math.max(cooldown, now + tonumber(ARGV[i + 1]))
    i = i + 2
  elseif name == 'stats' then
    shared = share_stats(KEYS[2], i + 1, now)
    i = i + 13
  elseif name == 'learn' then
    local measured_at = now - tonumber(ARGV[i + 1])
    for k, c in ipairs({ T, R }) do
      local at = i + 2 + 4 * (k - 1)
      if ARGV[at] == '1' then
        learn(c, tonumber(ARGV[at + 1]), measured_at, tonumber(ARGV[at + 2]),
          tonumber(ARGV[at + 3]))
      end
    end
    i = i + 10
  else
    return redis.error_reply('settle: unknown correction ' .. tostring(name))
  end
  changed = changed or name ~= 'stats'
end
if changed then save() end
local out = reply(1, 0)
for _, value in ipairs(shared or {}) do out[#out + 1] = value end
return out

-- Charge positive amounts, refund negative ones (BucketPair.adjust).
-- ARGV[OP..OP+1]: requests, tokens

local amounts = { tonumber(ARGV[OP]), tonumber(ARGV[OP + 1]) }
for i, c in ipairs({ R, T }) do
  local amount = amounts[i]
  if amount > 0 then
    charge(c, amount, 0)
  elseif amount < 0 then
    refund(c, -amount)
  end
end
save()
return reply(1, 0)

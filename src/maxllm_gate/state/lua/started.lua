-- A call reached the provider late (BucketPair.start, GcraCell.arrived_late).
-- ARGV[OP..OP+4]: how far behind full its requests cell was when it was charged, that
-- cell's 'rs' then, the same two for the tokens cell, and how late the call left (s).
-- Where a cell was less behind than the call was late, the provider's charge began
-- later than ours: move it on by the difference, less what was moved since.

local late = tonumber(ARGV[OP + 4])
local function arrived_late(c, behind, shifted)
  local moved = late - behind - (c.shifted - shifted)
  if moved > 0 then
    c.tat = c.tat + moved
    c.shifted = c.shifted + moved
  end
end
arrived_late(R, tonumber(ARGV[OP]), tonumber(ARGV[OP + 1]))
arrived_late(T, tonumber(ARGV[OP + 2]), tonumber(ARGV[OP + 3]))
save()
return reply(1, 0)

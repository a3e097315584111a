-- The call of admission number ARGV[OP] leaves for the provider ARGV[OP + 1] seconds after it
-- was admitted (BucketPair.start). If no admission came since (by any process) and it
-- started from a full cell, that cell's charge starts that much later.

if seq == tonumber(ARGV[OP]) and anchor ~= 0 then
  local delay = math.max(0, tonumber(ARGV[OP + 1]))
  if anchor % 2 == 1 then R.tat = R.tat + delay end
  if anchor >= 2 then T.tat = T.tat + delay end
  anchor = 0
  save()
end
return reply(1, 0)

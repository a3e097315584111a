-- Give back over-reserved tokens, at most the phantom still held (GcraCell.release).
-- ARGV[6]: tokens

release(T, tonumber(ARGV[6]))
save()
return reply(1, 0)

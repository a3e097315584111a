-- Give back over-reserved tokens, at most the phantom still held (GcraCell.release).
-- ARGV[OP]: tokens

release(T, tonumber(ARGV[OP]))
save()
return reply(1, 0)

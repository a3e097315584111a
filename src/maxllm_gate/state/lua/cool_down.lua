-- Admit nothing for a while (BucketPair.cool_down). ARGV[OP]: seconds from now

cooldown = math.max(cooldown, now + tonumber(ARGV[OP]))
save()
return reply(1, 0)

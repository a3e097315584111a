-- Admit nothing for a while (BucketPair.cool_down). ARGV[6]: seconds from now

cooldown = math.max(cooldown, now + tonumber(ARGV[6]))
save()
return reply(1, 0)

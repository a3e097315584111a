-- One key's statistics alone, when no settlement carried them (see _stats.lua).
-- KEYS[1]: "<prefix>:{<key id>}:stats"; ARGV[1..12]: share_stats' arguments.

local clock = redis.call('TIME')
return share_stats(KEYS[1], 1, tonumber(clock[1]) + tonumber(clock[2]) / 1000000)

-- Share one key's latency and error statistics between processes (not a limit).
-- Prepended to stats.lua (statistics alone) and settle.lua (with a call's settlement).
--
-- share_stats(KEY, at, now): KEY is "<prefix>:{<key id>}:stats" (the same slot as the
-- key's buckets); ARGV[at..at+11] are:
--   +0       the calling process's id
--   +1       TTL of the hash, seconds; +2: seconds after which a silent process is dropped
--   +3..+7   calls, successes, errors, rate_limited, tokens since this process's last report
--   +8       its latency moving average in seconds ('' when it has none); +9: its error rate
--   +10      the fingerprint of the key's secret (first 8 hex digits of its sha256, not the key)
--   +11      why this process disabled the key ('' if it has not)
--
-- A key one process disabled (revoked: 401) is disabled for all: the reason is stored
-- under its fingerprint, so a new secret under the same key id starts enabled.
-- Counters are summed over every process; the averages are the mean over the processes
-- heard from within ARGV[at+2] seconds (on the server's clock).
-- Returns: the five totals, the mean latency ('' when none), the mean error rate,
-- processes, and why the key is disabled ('' if it is not).

local STATS_COUNTERS = { 'calls', 'successes', 'errors', 'rate_limited', 'tokens' }

local function share_stats(KEY, at, now)
  local function arg(offset) return ARGV[at + offset] end
  local function fmt(x) return string.format('%.17g', x) end
  local me, stale = arg(0), tonumber(arg(2))

  for i, name in ipairs(STATS_COUNTERS) do
    local delta = tonumber(arg(2 + i))
    if delta ~= 0 then redis.call('HINCRBY', KEY, name, delta) end
  end
  if arg(8) ~= '' then redis.call('HSET', KEY, 'lat:' .. me, arg(8)) end
  redis.call('HSET', KEY, 'err:' .. me, arg(9), 'at:' .. me, fmt(now))
  local disabled_field = 'disabled:' .. arg(10)
  if arg(11) ~= '' then redis.call('HSETNX', KEY, disabled_field, arg(11)) end

  local flat = redis.call('HGETALL', KEY)
  local totals, lat, err, seen = {}, {}, {}, {}
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    local kind, who = string.match(field, '^(%a+):(.+)$')
    if kind == 'disabled' then kind = nil end
    if kind == 'lat' then lat[who] = tonumber(value)
    elseif kind == 'err' then err[who] = tonumber(value)
    elseif kind == 'at' then seen[who] = tonumber(value)
    elseif not kind and not string.find(field, ':') then totals[field] = value end
  end

  local processes, lat_sum, lat_count, err_sum = 0, 0, 0, 0
  for who, seen_at in pairs(seen) do
    if now - seen_at > stale then
      redis.call('HDEL', KEY, 'lat:' .. who, 'err:' .. who, 'at:' .. who)
    else
      processes = processes + 1
      err_sum = err_sum + (err[who] or 0)
      if lat[who] then
        lat_sum = lat_sum + lat[who]
        lat_count = lat_count + 1
      end
    end
  end
  redis.call('PEXPIRE', KEY, math.ceil(tonumber(arg(1)) * 1000))

  local out = {}
  for i, name in ipairs(STATS_COUNTERS) do out[i] = totals[name] or '0' end
  out[6] = lat_count > 0 and fmt(lat_sum / lat_count) or ''
  out[7] = fmt(err_sum / math.max(1, processes))
  out[8] = processes
  out[9] = redis.call('HGET', KEY, disabled_field) or ''
  return out
end

-- The bucket pair of one (key id, model) as one Redis hash, and the GcraCell
-- arithmetic of maxllm_gate/limits/gcra.py and buckets.py, ported line for line.
--
-- Prepended to every operation script (reserve.lua, adjust.lua, ...) when
-- RedisState loads them, so each operation runs as one atomic script, on the
-- server's clock (TIME), whatever the clocks of the processes that call it.
--
-- KEYS[1]     the hash of one (key id, model): "<prefix>:{<key id>}:<model>"
-- ARGV[1..4]  the caller's configured rpm_limit, tpm_limit, rpm_capacity, tpm_capacity
-- ARGV[5]     the hash's TTL in seconds (refreshed on every write)
-- ARGV[6]     cold start: seconds of refill a fresh hash starts without (see below)
-- ARGV[7]     N, the number of extra cells (LimitSpec.extra: OTPM, daily caps), then
--             6 values for each: limit per minute, capacity, the weights of a cost's
--             requests, tokens and output tokens, and its window in seconds
-- ARGV[OP..]  the operation's own arguments (OP = 8 + 6 N)
--
-- Hash fields (all absent on a fresh key):
--   rt, tt   requests / tokens "theoretical arrival time" (tat), server seconds
--   ri, ti   learned intervals (seconds per unit) from a provider's lower limit
--   rc, tc   learned capacities
--   ph       the tokens cell's phantom (over-reserved, releasable tokens)
--   cd       cooldown until (server seconds)
--   ar, at   requests / tokens admitted in all; seq: admissions in all
--   rs, ts   seconds the requests / tokens cells' charges were moved on in all, for calls
--            that reached the provider late (GcraCell.shifted)
--   x<k>t, x<k>i, x<k>c, x<k>p   extra cell k's tat, learned interval, learned capacity
--            and phantom (k = 1..N)
--
-- A fresh hash (never written, expired, or lost with a Redis restart or flush) starts
-- full but for ARGV[6] seconds of refill (at most its capacity): the calls that spend
-- its first burst leave on cold connections and reach the provider up to a few hundred
-- milliseconds late, while the calls admitted next, on warm connections, do not. The
-- provider sees them bunched. After a restart or flush it also stands for the calls
-- still in flight, which the new state does not know.
--
-- Learned values override the caller's configuration only the conservative way:
-- the slower of the two rates; a learned capacity (the provider's headers prove it).
--
-- Every number crosses the wire as a string ("%.17g" round-trips a double;
-- a Lua number in a reply would be truncated to an integer).

local KEY = KEYS[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local NEVER = -math.huge

local h = redis.call('HMGET', KEY, 'rt', 'tt', 'ri', 'ti', 'rc', 'tc', 'ph', 'cd', 'ar', 'at',
  'seq', 'rs', 'ts')

local function num(value, default)
  if value then return tonumber(value) end
  return default
end

local function fmt(x)
  return string.format('%.17g', x)
end

local function new_cell(tat, limit, capacity, learned_interval, learned_capacity, phantom)
  local interval = 60 / limit
  if learned_interval and learned_interval > interval then interval = learned_interval end
  return { tat = tat, interval = interval, capacity = learned_capacity or capacity,
    phantom = phantom, li = learned_interval, lc = learned_capacity }
end

local R = new_cell(num(h[1], NEVER), tonumber(ARGV[1]), tonumber(ARGV[3]), num(h[3], nil),
  num(h[5], nil), 0)
local T = new_cell(num(h[2], NEVER), tonumber(ARGV[2]), tonumber(ARGV[4]), num(h[4], nil),
  num(h[6], nil), num(h[7], 0))
local cooldown = num(h[8], NEVER)
local admitted_r, admitted_t = num(h[9], 0), num(h[10], 0)
local seq = num(h[11], 0)
R.shifted, T.shifted = num(h[12], 0), num(h[13], 0)
-- How far behind full each cell was before this operation's charge (reserve.lua sets it).
local behind_r, behind_t = math.huge, math.huge
local TTL = tonumber(ARGV[5])

-- The extra cells, each with the weights it counts a cost by (BucketPair.extra).
local X = {}
for k = 1, tonumber(ARGV[7]) do
  local a = 8 + 6 * (k - 1)
  local x = redis.call('HMGET', KEY, 'x' .. k .. 't', 'x' .. k .. 'i', 'x' .. k .. 'c',
    'x' .. k .. 'p')
  local c = new_cell(num(x[1], NEVER), tonumber(ARGV[a]), tonumber(ARGV[a + 1]), num(x[2], nil),
    num(x[3], nil), num(x[4], 0))
  c.wr, c.wt, c.wo = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  c.window = tonumber(ARGV[a + 5])
  X[k] = c
end
local OP = 8 + 6 * #X

-- What a cost of r requests, t tokens and o output tokens takes from extra cell c.
local function amount(c, r, t, o)
  return c.wr * r + c.wt * t + c.wo * o
end

local fresh = not h[11]  -- every write stores 'seq'
local cold = tonumber(ARGV[6])
if fresh and cold > 0 then
  for _, c in ipairs({ R, T, unpack(X) }) do
    c.tat = now + math.min(cold, c.capacity * c.interval)
  end
end

-- GcraCell ----------------------------------------------------------------------------

local function fit_time(c, cost)
  if cost > c.capacity then return c.tat end
  return c.tat + (cost - c.capacity) * c.interval
end

local function cap_phantom(c)
  local debt = (c.tat - now) / c.interval
  if c.phantom > debt then c.phantom = math.max(0, debt) end
end

local function charge(c, cost, phantom)
  cap_phantom(c)
  c.tat = math.max(c.tat, now) + cost * c.interval
  c.phantom = c.phantom + phantom
end

local function refund(c, amount)
  if c.tat > now then c.tat = math.max(now, c.tat - amount * c.interval) end
  cap_phantom(c)
end

local function release(c, amount)
  cap_phantom(c)
  local released = math.min(amount, c.phantom)
  if released > 0 then
    c.phantom = c.phantom - released
    c.tat = c.tat - released * c.interval
  end
end

local function limit_remaining(c, remaining)
  local target = now + (c.capacity - math.max(0, remaining)) * c.interval
  if target > c.tat then
    local lowered = (target - math.max(c.tat, now)) / c.interval
    c.tat = target
    c.phantom = math.max(0, c.phantom - lowered)
  end
end

local function learn(c, remaining, measured_at, capacity_floor, limit, window)
  if limit > 0 and limit < 60 / c.interval then
    local debt = math.max(0, c.tat - now) / c.interval
    local scale = limit / (60 / c.interval)
    c.interval = 60 / limit
    c.li = c.interval
    if debt > 0 then c.tat = now + debt * c.interval end
    c.capacity = math.max(1, c.capacity * scale)  -- the same seconds of burst
    c.lc = c.capacity
  end
  local ceiling = (60 / c.interval) * (window or 60) / 60  -- one window of its limit
  if remaining >= 1 and capacity_floor > c.capacity then
    c.capacity = math.min(capacity_floor, ceiling)
    c.lc = c.capacity
  end
  local refilled = math.max(0, now - measured_at) / c.interval
  limit_remaining(c, remaining + refilled)
end

-- storage -------------------------------------------------------------------------------

local function save()
  local fields = { 'ph', fmt(T.phantom), 'ar', fmt(admitted_r), 'at', fmt(admitted_t),
    'seq', seq, 'rs', fmt(R.shifted), 'ts', fmt(T.shifted) }
  local function put(name, value)
    if value and value > NEVER and value < math.huge then
      fields[#fields + 1] = name
      fields[#fields + 1] = fmt(value)
    end
  end
  put('rt', R.tat)
  put('tt', T.tat)
  put('ri', R.li)
  put('ti', T.li)
  put('rc', R.lc)
  put('tc', T.lc)
  put('cd', cooldown)
  local horizon = math.max(R.tat, T.tat, cooldown) - now
  for k, c in ipairs(X) do
    put('x' .. k .. 't', c.tat)
    put('x' .. k .. 'i', c.li)
    put('x' .. k .. 'c', c.lc)
    put('x' .. k .. 'p', c.phantom)
    horizon = math.max(horizon, c.tat - now)
  end
  redis.call('HSET', KEY, unpack(fields))
  -- Keep the hash at least while it still holds debt or a cooldown.
  redis.call('PEXPIRE', KEY, math.ceil(math.max(TTL, horizon + 1) * 1000))
end

-- The reply every operation ends with: a status, a wait, and the state the
-- caller caches, with times as seconds from now (never absolute server times).
-- (-inf, "full since forever", crosses as "-inf").
-- Each extra cell adds its tat, interval and capacity.
local function reply(status, wait)
  local out = { status, fmt(wait),
    fmt(R.tat - now), fmt(R.interval), fmt(R.capacity),
    fmt(T.tat - now), fmt(T.interval), fmt(T.capacity),
    fmt(cooldown - now), fmt(admitted_r), fmt(admitted_t), seq,
    fmt(behind_r), fmt(behind_t), fmt(R.shifted), fmt(T.shifted) }
  for _, c in ipairs(X) do
    out[#out + 1] = fmt(c.tat - now)
    out[#out + 1] = fmt(c.interval)
    out[#out + 1] = fmt(c.capacity)
  end
  return out
end

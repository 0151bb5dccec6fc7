//! The Lua scripts that keep the shared log in Redis: one atomic script per admission, settlement,
//! raise from Meta's feedback, admin peek and write-back of calls made while Redis was away, each
//! reading time from Redis `TIME` so replicas with skewed clocks agree.
//!
//! Text only; `redis.rs` runs them. A script must stay safe to run twice with the same arguments
//! (a call that met a dead connection is retried once): it must never count a call twice.
//!
//! A bucket is three keys: `:log`, the completed calls; `:fl`, calls in flight (a sorted set of
//! admission members scored by their lease end); `:blk`, blocked until (microseconds). The log is
//! one string that grows with the budget, not with every call: a 4-byte count of the calls in it
//! and the 4-byte tick it is written with, then 8-byte records of a 6-byte tick and a 2-byte count,
//! ticks ascending. A tick is 1/3600 of
//! the window (at least 1 ms), and a call completed at `t` is recorded at the tick that ends at or
//! after `t`: it leaves the window at most one tick late, never early, so never more than the
//! limit pass in any window and at most 1/3600 of the budget (0.03%) waits that tick. The string
//! holds at most 3,601 records (29 KB) however many calls the window holds, and 8 bytes a call
//! when it holds fewer.

/// The log's functions, prepended to every script that reads or writes it.
macro_rules! log_lib {
    () => {
        r#"
local function tick_us(window) return math.max(1000, math.floor(window / 3600)) end
local function tick_of(us, tick) return math.ceil(us / tick) end
local function log_total(key)
  local h = redis.call('GETRANGE', key, 0, 3)
  if #h < 4 then return 0 end
  return (struct.unpack('>I4', h))
end
-- The tick the log was written with (replicas may disagree on the window), else `default`.
local function log_tick(key, default)
  local h = redis.call('GETRANGE', key, 4, 7)
  if #h < 4 then return default end
  return (struct.unpack('>I4', h))
end
-- Drops the records that have left the window; returns the calls still in it.
local function log_trim(key, now, window, tick)
  local total = log_total(key)
  if total == 0 then return 0 end
  local off, gone = 8, 0
  while true do
    local chunk = redis.call('GETRANGE', key, off, off + 511)
    local i, kept = 1, false
    while i + 7 <= #chunk do
      local t, c = struct.unpack('>I6I2', chunk, i)
      if t * tick + window > now then kept = true break end
      gone = gone + c
      i = i + 8
    end
    off = off + i - 1
    if kept or #chunk < 512 then break end
  end
  if gone == 0 then return total end
  total = total - gone
  if total <= 0 then redis.call('DEL', key) return 0 end
  local rest = redis.call('GETRANGE', key, off, -1)
  redis.call('SET', key, struct.pack('>I4I4', total, tick) .. rest, 'KEEPTTL')
  return total
end
-- When the `need`-th oldest call in the log leaves the window (nil if there are fewer).
local function log_exit(key, need, window, tick)
  local off, seen = 8, 0
  while true do
    local chunk = redis.call('GETRANGE', key, off, off + 511)
    if #chunk < 8 then return nil end
    local i = 1
    while i + 7 <= #chunk do
      local t, c = struct.unpack('>I6I2', chunk, i)
      seen = seen + c
      if seen >= need then return t * tick + window end
      i = i + 8
    end
    off = off + #chunk
  end
end
-- How long until the `need`-th oldest call leaves the window (a window if there are fewer).
local function log_wait(key, need, now, window, tick)
  local e = log_exit(key, need, window, tick)
  if not e then return window end
  if e < now then return 0 end
  return e - now
end
-- Logs `n` calls at tick `t`; a last record at or after `t` takes them (later, never earlier).
local function log_add(key, t, n, tick)
  while n > 0 do
    local c = math.min(n, 65535)
    local len = redis.call('STRLEN', key)
    if len < 16 then
      redis.call('SET', key, struct.pack('>I4I4I6I2', c, tick, t, c), 'KEEPTTL')
    else
      local total = log_total(key)
      local lt, lc = struct.unpack('>I6I2', redis.call('GETRANGE', key, len - 8, len - 1))
      if lt >= t and lc + c <= 65535 then
        redis.call('SETRANGE', key, len - 8, struct.pack('>I6I2', lt, lc + c))
      else
        redis.call('APPEND', key, struct.pack('>I6I2', math.max(lt, t), c))
      end
      redis.call('SETRANGE', key, 0, struct.pack('>I4', total + c))
    end
    n = n - c
  end
end
-- Logs calls at the ticks of `adds` ({tick, n} pairs, any order) in their places: one rewrite.
local function log_merge(key, adds, tick)
  if #adds == 0 then return end
  table.sort(adds, function(a, b) return a[1] < b[1] end)
  local s = redis.call('GET', key) or ''
  local old, i = {}, 9
  while i + 7 <= #s do
    local t, c = struct.unpack('>I6I2', s, i)
    table.insert(old, {t, c})
    i = i + 8
  end
  local out, total, a, b = {}, 0, 1, 1
  local lt, lc = nil, 0
  local function put(t, c)
    total = total + c
    if lt == t and lc + c <= 65535 then lc = lc + c return end
    if lt then table.insert(out, struct.pack('>I6I2', lt, lc)) end
    lt, lc = t, c
  end
  while a <= #old or b <= #adds do
    if b > #adds or (a <= #old and old[a][1] <= adds[b][1]) then
      put(old[a][1], old[a][2]) a = a + 1
    else
      put(adds[b][1], adds[b][2]) b = b + 1
    end
  end
  if lt then table.insert(out, struct.pack('>I6I2', lt, lc)) end
  redis.call('SET', key, struct.pack('>I4I4', total, tick) .. table.concat(out), 'KEEPTTL')
end
-- Leases that ran out (a replica died mid-call) become calls at their lease end: the latest
-- moment Meta can have counted them.
local function fl_expire(log, fl, now, tick, ttl)
  local exp = redis.call('ZRANGEBYSCORE', fl, '-inf', now, 'WITHSCORES')
  for j = 1, #exp, 2 do log_add(log, tick_of(tonumber(exp[j+1]), tick), 1, tick) end
  if #exp > 0 then
    redis.call('ZREMRANGEBYSCORE', fl, '-inf', now)
    redis.call('PEXPIRE', log, ttl)
  end
end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"#
    };
}

/// Admission of `n` slots in each bucket, all or nothing; the last key is the app-wide block (Meta's
/// code 4). Answers `{1, per bucket: remaining, until a slot frees, calls in the log, in flight}`
/// or `{0, bucket, retry after, blocked, calls in the log, in flight}`.
pub(super) const ADMIT: &str = concat!(
    log_lib!(),
    r#"
local now = now_us()
local window = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local member = ARGV[3]
local nb = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local ab = tonumber(redis.call('GET', KEYS[nb*3+1]) or '0')
if ab > now then return {0, 0, ab - now, 1, 0, 0} end
local done, ticks = {}, {}
for i = 0, nb - 1 do
  local log, fl, blk = KEYS[i*3+1], KEYS[i*3+2], KEYS[i*3+3]
  local tick = log_tick(log, tick_us(window))
  ticks[i] = tick
  local limit = tonumber(ARGV[6 + i*2])
  local n = tonumber(ARGV[7 + i*2])
  fl_expire(log, fl, now, tick, ttl)
  local d = log_trim(log, now, window, tick)
  local f = redis.call('ZCARD', fl)
  done[i] = d
  local b = tonumber(redis.call('GET', blk) or '0')
  if b > now then return {0, i, b - now, 1, d, f} end
  if d + f + n > limit then
    return {0, i, log_wait(log, d + f + n - limit, now, window, tick), 0, d, f}
  end
end
local out = {1}
for i = 0, nb - 1 do
  local log, fl = KEYS[i*3+1], KEYS[i*3+2]
  local limit = tonumber(ARGV[6 + i*2])
  local n = tonumber(ARGV[7 + i*2])
  for k = 1, n do redis.call('ZADD', fl, now + lease, member .. ':' .. i .. ':' .. k) end
  local f = redis.call('ZCARD', fl)
  local reset = log_wait(log, 1, now, window, ticks[i])
  redis.call('PEXPIRE', log, ttl)
  redis.call('PEXPIRE', fl, ttl)
  table.insert(out, limit - done[i] - f)
  table.insert(out, reset)
  table.insert(out, done[i])
  table.insert(out, f)
end
return out
"#
);

/// Completion (ARGV[2] = "1": the call was sent, log it now) or release (not sent) of an admission.
pub(super) const SETTLE: &str = concat!(
    log_lib!(),
    r#"
local now = now_us()
local member = ARGV[1]
local sent = ARGV[2] == '1'
local nb = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
for i = 0, nb - 1 do
  local log, fl = KEYS[i*2+1], KEYS[i*2+2]
  local tick = log_tick(log, tick_us(window))
  local n = tonumber(ARGV[6 + i])
  local logged = 0
  for k = 1, n do
    if redis.call('ZREM', fl, member .. ':' .. i .. ':' .. k) == 1 and sent then logged = logged + 1 end
  end
  if logged > 0 then
    log_add(log, tick_of(now, tick), logged, tick)
    redis.call('PEXPIRE', log, ttl)
  end
end
return 1
"#
);

/// Meta reported more usage than the log holds: log the difference now. Optionally block.
pub(super) const RAISE: &str = concat!(
    log_lib!(),
    r#"
local now = now_us()
local window = tonumber(ARGV[1])
local target = tonumber(ARGV[2])
local block_for = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local tick = log_tick(KEYS[1], tick_us(window))
local used = log_trim(KEYS[1], now, window, tick) + redis.call('ZCARD', KEYS[2])
if target > used then
  log_add(KEYS[1], tick_of(now, tick), target - used, tick)
  redis.call('PEXPIRE', KEYS[1], ttl)
end
if block_for > 0 then
  local until_ = now + block_for
  local b = tonumber(redis.call('GET', KEYS[3]) or '0')
  if until_ > b then redis.call('SET', KEYS[3], until_, 'PX', math.floor(block_for / 1000) + 1000) end
end
return used
"#
);

/// State of one bucket for the admin view: used, in flight, microseconds until a slot frees,
/// microseconds blocked.
pub(super) const PEEK: &str = concat!(
    log_lib!(),
    r#"
local now = now_us()
local window = tonumber(ARGV[1])
local tick = log_tick(KEYS[1], tick_us(window))
local done = log_trim(KEYS[1], now, window, tick)
local fl = redis.call('ZCARD', KEYS[2])
local reset = log_wait(KEYS[1], 1, now, window, tick)
local b = tonumber(redis.call('GET', KEYS[3]) or '0') - now
if b < 0 then b = 0 end
return {done, fl, reset, b}
"#
);

/// A replica says it is here and knows nothing Redis misses: KEYS[1] is the sorted set of replicas
/// by their last check-in (Redis milliseconds), KEYS[2] the data's epoch: a name Redis keeps while it
/// keeps its data, and a new one after it lost them (restarted without persistence). ARGV:
/// replica, since (ms; 0: now), fresh (ms), the epoch the replica knows, a new epoch if none is set,
/// `1` if the replica has nothing left to write (else it only asks, and is not checked in).
/// Answers `{now, replicas checked in since `since`, replicas checked in within `fresh`, epoch}`;
/// `now` is 0, and the replica not checked in, when the epoch is not the one it knows.
pub(super) const CHECK_IN: &str = r#"
local e = redis.call('GET', KEYS[2])
if not e then
  e = ARGV[5]
  redis.call('SET', KEYS[2], e)
end
if e ~= ARGV[4] then return {0, 0, 0, e} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = tonumber(ARGV[2])
if since == 0 then since = now end
if ARGV[6] == '1' then redis.call('ZADD', KEYS[1], now, ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600000)
redis.call('PEXPIRE', KEYS[1], 3600000)
return {now, redis.call('ZCOUNT', KEYS[1], since, '+inf'),
  redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[3]), '+inf'), e}
"#;

/// Writes what Redis does not know of one replica's calls, before it admits through Redis again.
/// KEYS: `:log` and `:fl` of each bucket named, then the replica's set of members already logged.
/// ARGV: window, ttl (ms), lease, entry count, then per entry: member, kind, age in microseconds,
/// bucket count, and per bucket its key pair's index and `n`. Kinds: `f`, made while Redis was
/// away and still in flight: its slots are held under `member`, as an admission's would be, for
/// a settlement later; `d`, made while Redis was away and done: logged at its age (in its place,
/// not now) unless logged before; `s`, held here and its settlement lost: logged at its age if
/// still held (a settlement that ran before its answer was lost logged it already); `r`, held and
/// never sent: freed. Slots a lease already turned into calls are not counted again, and the set
/// of logged members makes a rerun (a lost answer, a second reconnect) count nothing twice.
pub(super) const WRITE_BACK: &str = concat!(
    log_lib!(),
    r#"
local now = now_us()
local window = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local ne = tonumber(ARGV[4])
local tick = tick_us(window)
local logged = KEYS[#KEYS]
local adds = {}
local a = 5
for e = 1, ne do
  local member, kind, age, nb = ARGV[a], ARGV[a+1], tonumber(ARGV[a+2]), tonumber(ARGV[a+3])
  a = a + 4
  local fresh = kind == 'd' and redis.call('SADD', logged, member) == 1
  for i = 0, nb - 1 do
    local b, n = tonumber(ARGV[a]), tonumber(ARGV[a+1])
    a = a + 2
    local log, fl = KEYS[b*2+1], KEYS[b*2+2]
    local freed = 0
    for k = 1, n do
      local m = member .. ':' .. i .. ':' .. k
      if kind == 'f' then redis.call('ZADD', fl, now + lease, m)
      else freed = freed + redis.call('ZREM', fl, m) end
    end
    local count = 0
    if kind == 'd' and (fresh or freed > 0) then count = n end
    if kind == 's' then count = freed end
    if kind == 'f' then redis.call('PEXPIRE', fl, ttl) end
    if count > 0 and age < window then
      adds[log] = adds[log] or {}
      local tk = log_tick(log, tick)
      table.insert(adds[log], {tick_of(now - age, tk), count})
    end
  end
end
for log, list in pairs(adds) do
  local tk = log_tick(log, tick)
  log_trim(log, now, window, tk)
  log_merge(log, list, tk)
  redis.call('PEXPIRE', log, ttl)
end
redis.call('PEXPIRE', logged, ttl)
return 1
"#
);

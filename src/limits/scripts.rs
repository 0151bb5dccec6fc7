//! The Lua scripts that keep the shared log in Redis: one atomic script per admission, settlement,
//! raise from Meta's feedback and admin peek, each reading time from Redis `TIME` so replicas with
//! skewed clocks agree.
//!
//! Text only; `redis.rs` runs them. A script must stay safe to run twice with the same arguments
//! (a call that met a dead connection is retried once): it must never count a call twice.

/// Admission of `n` slots in each bucket, all or nothing; the last key is the app-wide block (Meta's
/// code 4). A bucket is three keys: `:log` (sorted
/// set of completion times), `:fl` (calls in flight, scored by their lease end) and `:blk` (blocked
/// until, microseconds). Leases that ran out (a replica died mid-call) become log entries at their
/// lease end: the latest moment Meta can have counted them.
pub(super) const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local member = ARGV[3]
local nb = tonumber(ARGV[4])
local ttl = math.floor((window + lease) / 1000) + 60000
local ab = tonumber(redis.call('GET', KEYS[nb*3+1]) or '0')
if ab > now then return {0, 0, ab - now, 1} end
for i = 0, nb - 1 do
  local log, fl, blk = KEYS[i*3+1], KEYS[i*3+2], KEYS[i*3+3]
  local limit = tonumber(ARGV[5 + i*2])
  local n = tonumber(ARGV[6 + i*2])
  local exp = redis.call('ZRANGEBYSCORE', fl, '-inf', now, 'WITHSCORES')
  for j = 1, #exp, 2 do redis.call('ZADD', log, exp[j+1], exp[j]) end
  if #exp > 0 then redis.call('ZREMRANGEBYSCORE', fl, '-inf', now) end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  local b = tonumber(redis.call('GET', blk) or '0')
  if b > now then return {0, i, b - now, 1} end
  local used = redis.call('ZCARD', log) + redis.call('ZCARD', fl)
  if used + n > limit then
    local need = used + n - limit
    local retry = window
    local e = redis.call('ZRANGE', log, need - 1, need - 1, 'WITHSCORES')
    if #e > 0 then retry = tonumber(e[2]) + window - now end
    if retry < 0 then retry = 0 end
    return {0, i, retry, 0}
  end
end
local out = {1}
for i = 0, nb - 1 do
  local log, fl = KEYS[i*3+1], KEYS[i*3+2]
  local limit = tonumber(ARGV[5 + i*2])
  local n = tonumber(ARGV[6 + i*2])
  for k = 1, n do redis.call('ZADD', fl, now + lease, member .. ':' .. i .. ':' .. k) end
  local used = redis.call('ZCARD', log) + redis.call('ZCARD', fl)
  local reset = window
  local first = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  if #first > 0 then reset = tonumber(first[2]) + window - now end
  if reset < 0 then reset = 0 end
  redis.call('PEXPIRE', log, ttl)
  redis.call('PEXPIRE', fl, ttl)
  table.insert(out, limit - used)
  table.insert(out, reset)
end
return out
"#;

/// Completion (ARGV[2] = "1": the call was sent, log it now) or release (not sent) of an admission.
pub(super) const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local member = ARGV[1]
local sent = ARGV[2] == '1'
local nb = tonumber(ARGV[3])
for i = 0, nb - 1 do
  local log, fl = KEYS[i*2+1], KEYS[i*2+2]
  local n = tonumber(ARGV[4 + i])
  for k = 1, n do
    local m = member .. ':' .. i .. ':' .. k
    if redis.call('ZREM', fl, m) == 1 and sent then redis.call('ZADD', log, now, m) end
  end
end
return 1
"#;

/// Meta reported more usage than the log holds: log the difference now. Optionally block.
pub(super) const RAISE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local target = tonumber(ARGV[2])
local block_for = tonumber(ARGV[3])
local tag = ARGV[4]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
for k = used + 1, target do redis.call('ZADD', KEYS[1], now, tag .. ':' .. k) end
if block_for > 0 then
  local until_ = now + block_for
  local b = tonumber(redis.call('GET', KEYS[3]) or '0')
  if until_ > b then redis.call('SET', KEYS[3], until_, 'PX', math.floor(block_for / 1000) + 1000) end
end
return used
"#;

/// State of one bucket for the admin view: used, in flight, microseconds until a slot frees,
/// microseconds blocked.
pub(super) const PEEK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local done = redis.call('ZCARD', KEYS[1])
local fl = redis.call('ZCARD', KEYS[2])
local reset = window
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first > 0 then reset = tonumber(first[2]) + window - now end
local b = tonumber(redis.call('GET', KEYS[3]) or '0') - now
if b < 0 then b = 0 end
return {done, fl, reset, b}
"#;

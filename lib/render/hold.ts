// The hold: a new connection that finds no usable server on its port waits in haproxy's frontend, before any
// server is chosen, until one is usable (it then goes on to it) or the bound passes (it is then closed, as
// without the hold). A Lua action in `tcp-request content` does the waiting (docs/design.md, "The hold"):
// haproxy's queues, inspect-delay rules and retries cannot hold a connection while no server is usable.
// Pure: the script's text and the config lines that call it; lib/haproxy/ writes the script beside the config.

// How long past the bound the inspect-delay lets the action run: the action returns at the bound, and the
// delay is only haproxy's own cap on it.
const INSPECT_MARGIN_MS = 1_000;

// The global lines that load the script (SCRIPT: its path). haproxy 3.1 and later ask, on every load, how
// Lua's boolean samples are to be converted; the hold converts none, and haproxy before 3.1 knows no such
// setting: a conditional block sets it only where it exists.
export const HOLD_GLOBAL = ['    .if version_atleast(3.1)', '        tune.lua.bool-sample-conversion normal', '    .endif', '    lua-load SCRIPT'];

// The config lines of a proxy that holds: its name is the proxy whose usable servers are counted.
export function holdLines(proxy: string, holdMs: number): string[] {
  if (holdMs === 0) return [];
  return [`    tcp-request inspect-delay ${holdMs + INSPECT_MARGIN_MS}ms`, `    tcp-request content lua.ambassador_hold ${proxy} ${holdMs}`];
}

// The hold times the histogram counts, in seconds (the last bucket, +Inf, is implied).
export const HOLD_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

// The action, and `ambassador hold` on the admin socket: when this worker's config was loaded, then one line
// per proxy that held a connection,
//   loaded <seconds.micros>
//   <proxy> now <n> total <n> released <n> timeouts <n> abandoned <n> sum <seconds> buckets <n>,<n>,...
// counts since this worker started (a reload starts them again). A connection is `released` when a server
// became usable, a `timeout` when the bound passed first, `abandoned` when its stream ended while it waited
// (the client left: haproxy ends the action without resuming it, so it is found by its age).
// From haproxy 2.8 a server's state change is an event (core.event_sub) and a held connection sleeps on a
// queue until one comes or its bound passes; before, it looks every POLL_MS.
// `ambassador gate <proxy> close|open`: a fence closes the proxy's gate before the old master goes into
// maintenance, and opens it once the new master is enabled. A connection checks for a usable server and is
// given one a moment later, on another thread than the one that fences; in that moment the old master may
// go into maintenance, and the connection would be closed for want of a server. With the gate closed first,
// every new connection waits; those that passed before are on the old master before it is fenced, and are
// shut with its sessions. A gate ambassador leaves closed opens by itself after GATE_MAX_MS.
export const HOLD_SCRIPT = `-- Written by ambassador, which loads it into haproxy: edits are lost.
local POLL_MS = 10
local BUCKETS = { ${HOLD_BUCKETS.join(', ')} }
local events = core.event_sub ~= nil and core.queue ~= nil
-- Each load of the config is a worker of its own, with counts of its own: this tells them apart.
local loaded = core.now()

local stats = {}
local held = {}
-- Proxies closed by ambassador for a fence ("ambassador gate <proxy> close"), each until when at the latest.
local gates = {}
local GATE_MAX_MS = 15000
local next_id = 0
local wakers = {}

local function now_ms()
  local t = core.now()
  return t.sec * 1000 + t.usec / 1000
end

local function stats_of(proxy)
  local s = stats[proxy]
  if s == nil then
    s = { total = 0, released = 0, timeouts = 0, abandoned = 0, sum = 0, buckets = {} }
    for i = 1, #BUCKETS do s.buckets[i] = 0 end
    stats[proxy] = s
  end
  return s
end

local function observe(s, seconds)
  s.sum = s.sum + seconds
  for i = 1, #BUCKETS do
    if seconds <= BUCKETS[i] then s.buckets[i] = s.buckets[i] + 1 end
  end
end

-- A held connection whose stream ended while it waited is never resumed: past its deadline and a margin, it
-- is counted abandoned and forgotten.
local function sweep()
  local now = now_ms()
  for id, h in pairs(held) do
    if now > h.deadline + 2000 then
      held[id] = nil
      local s = stats_of(h.proxy)
      s.abandoned = s.abandoned + 1
    end
  end
end

local function wake_all()
  for waker in pairs(wakers) do waker:push(true) end
end

if events then
  core.event_sub({ "SERVER_UP", "SERVER_ADMIN", "SERVER_ADD" }, wake_all)
end

-- A server of the proxy is usable, and no fence has the proxy closed.
local function open(txn, proxy)
  local gate = gates[proxy]
  if gate ~= nil and now_ms() < gate then return false end
  return txn.f:nbsrv(proxy) > 0
end

local function wait(txn, proxy, deadline)
  if not events then
    while not open(txn, proxy) and now_ms() < deadline do core.msleep(POLL_MS) end
    return
  end
  local waker = core.queue()
  wakers[waker] = true
  core.register_task(function()
    core.msleep(math.max(0, math.ceil(deadline - now_ms())))
    waker:push(false)
  end)
  -- The bound is the timer's false, not a clock read here: each thread's clock is its own, and one a little
  -- behind the timer's would wait on for a wake that never comes.
  while not open(txn, proxy) do
    if waker:pop_wait() == false then break end
  end
  wakers[waker] = nil
end

core.register_action("ambassador_hold", { "tcp-req" }, function(txn, proxy, bound)
  if open(txn, proxy) then return end
  sweep()
  local began = now_ms()
  local deadline = began + tonumber(bound)
  next_id = next_id + 1
  local id = next_id
  held[id] = { proxy = proxy, deadline = deadline }
  local s = stats_of(proxy)
  s.total = s.total + 1
  wait(txn, proxy, deadline)
  held[id] = nil
  if open(txn, proxy) then s.released = s.released + 1 else s.timeouts = s.timeouts + 1 end
  observe(s, (now_ms() - began) / 1000)
end, 2)

core.register_cli({ "ambassador", "gate" }, "ambassador: <proxy> close|open: hold its new connections for a fence, or not", function(applet, _, _, proxy, state)
  if state == "close" then
    gates[proxy] = now_ms() + GATE_MAX_MS
  else
    gates[proxy] = nil
    wake_all()
  end
end)

core.register_cli({ "ambassador", "hold" }, "ambassador: connections held while no server is usable", function(applet)
  sweep()
  applet:send(string.format("loaded %d.%06d\\n", loaded.sec, loaded.usec))
  local now = {}
  for _, h in pairs(held) do now[h.proxy] = (now[h.proxy] or 0) + 1 end
  for proxy, s in pairs(stats) do
    applet:send(string.format("%s now %d total %d released %d timeouts %d abandoned %d sum %.6f buckets %s\\n",
      proxy, now[proxy] or 0, s.total, s.released, s.timeouts, s.abandoned, s.sum, table.concat(s.buckets, ",")))
  end
end)
`;

#!/usr/bin/env python3
"""The floor under a workflow transition: what Redis spends, per step, on the commands a durable
step cannot do without, sent in the cheapest way possible (one pipe, no round trips waited on).

Each variant replays N steps of five-step runs against a fresh private redis-server (AOF
everysec, as bench/peers/run.sh uses) through `redis-cli --pipe`, and prints the server's CPU
time (INFO cpu, user + sys) per step. Values are the sizes Steward writes (--record, --hist,
--job bytes). Variants:
  queue     the queue alone: XADD the job, XREADGROUP it (64 a read), XACK + XDEL
  durable   queue + the state write (HSET of the step record and header) + the history line
            (APPEND): the irreducible commands of a fenced, audited transition, no script
  fenced    durable, with the version check done in a Lua script (one EVALSHA per 8 steps, the
            group-commit batch Steward measures), the writes made from inside the script
  steward   fenced, plus what Steward's commit script does besides: cjson-decoding its plan and
            the currency read (HGETALL) before each commit
Usage: bench/floor/floor.py [--steps 50000] [--record 260] [--hist 180] [--job 230]
"""
import argparse, os, shutil, socket, subprocess, sys, tempfile, time, json

def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)

SCRIPT = r"""
local batch = {}
local i = 1
local replies = {}
while i <= #ARGV do
  local run, ver, sid, field, record, hist, job, plan, nxt = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6], ARGV[i+7], ARGV[i+8]
  i = i + 9
  if plan ~= '' then cjson.decode(plan) end
  local h = 'run:' .. run
  local cur = redis.call('HGET', h, 'v') or '0'
  if cur == ver then
    local nv = tostring(tonumber(cur) + 1)
    redis.call('HSET', h, 'v', nv, field, record, 'h', '{"status":"running"}')
    redis.call('APPEND', 'log:' .. run, hist)
    redis.call('XACK', 'steps', 'g', sid)
    redis.call('XDEL', 'steps', sid)
    if nxt ~= '' then redis.call('XADD', 'steps', nxt, 'r', run, 'v', nv, 'j', job) end
    replies[#replies+1] = nv
  else
    replies[#replies+1] = 'conflict'
  end
end
return replies
"""

def start_redis():
    d = tempfile.mkdtemp()
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
                          "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                          "--logfile", os.path.join(d, "redis.log")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
            return p, port, d
        time.sleep(0.05)
    sys.exit("floor: redis-server did not start")

def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, check=True).stdout.decode()

def cpu(port):
    info = dict(l.split(":", 1) for l in cli(port, "info", "cpu").splitlines() if ":" in l)
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

def stats(port):
    info = dict(l.split(":", 1) for l in cli(port, "info", "stats").splitlines() if ":" in l)
    return int(info["total_net_input_bytes"]), int(info["total_commands_processed"])

def pipe(port, payload):
    subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=payload, check=True,
                   stdout=subprocess.DEVNULL)

def run_variant(variant, a):
    p, port, d = start_redis()
    try:
        cli(port, "xgroup", "create", "steps", "g", "$", "mkstream")
        sha = cli(port, "script", "load", SCRIPT).strip()
        record = b"r" * a.record
        hist = b"h" * (a.hist - 1) + b"\n"
        job = b"j" * a.job
        plan = json.dumps({"run": "x" * 26, "company": "contoso", "group": "g",
                           "ack": {"id": "1-1", "step": "create_user", "seq": 0},
                           "set": 2, "hist": [6], "jobs": [{"step": "license", "seq": 0, "a": 7}]}).encode()
        runs = a.steps // 5
        # Redis assigns stream ids: replay with explicit ids so the pipe can ack them blind.
        chunks, seq = [], 0
        batch = []
        def flush():
            nonlocal batch
            if not batch:
                return
            if variant in ("fenced", "steward"):
                argv = []
                for (run, ver, sid, field, nxt) in batch:
                    argv += [run, ver, sid, field, record, hist, job, plan if variant == "steward" else b"", nxt or b""]
                chunks.append(resp("EVALSHA", sha, 0, *argv))
            else:
                for (run, ver, sid, field, nxt) in batch:
                    h = "run:" + run
                    chunks.append(resp("HSET", h, "v", int(ver) + 1, field, record, "h", b'{"status":"running"}'))
                    chunks.append(resp("APPEND", "log:" + run, hist))
                    chunks.append(resp("XACK", "steps", "g", sid))
                    chunks.append(resp("XDEL", "steps", sid))
                    if nxt:
                        chunks.append(resp("XADD", "steps", nxt, "r", run, "v", int(ver) + 1, "j", job))
            batch = []
        # Start every run (its first job), then walk the steps in waves of 64 reads.
        ids = {}
        for r in range(runs):
            seq += 1
            sid = f"1-{seq}"
            ids[r] = sid
            chunks.append(resp("XADD", "steps", sid, "r", f"run{r:022d}", "v", 0, "j", job))
        setup = b"".join(chunks); chunks = []
        pipe(port, setup)
        c0 = cpu(port); b0, n0 = stats(port)
        for step in range(5):
            for start in range(0, runs, 64):
                chunks.append(resp("XREADGROUP", "GROUP", "g", "c", "COUNT", 64, "STREAMS", "steps", ">"))
                for r in range(start, min(start + 64, runs)):
                    run = f"run{r:022d}"
                    if variant == "steward":
                        chunks.append(resp("HGETALL", "run:" + run))
                    nxt = None
                    if step < 4:
                        seq += 1
                        nxt = f"1-{seq}"
                    if variant == "queue":
                        chunks.append(resp("XACK", "steps", "g", ids[r]))
                        chunks.append(resp("XDEL", "steps", ids[r]))
                        if nxt:
                            chunks.append(resp("XADD", "steps", nxt, "r", run, "v", step + 1, "j", job))
                    else:
                        batch.append((run, str(step), ids[r], f"s:step{step}", nxt))
                        if len(batch) == 8:
                            flush()
                    if nxt:
                        ids[r] = nxt
                flush()
            # Each wave must be read after the previous wave's jobs were added: pipe per wave.
            pipe(port, b"".join(chunks)); chunks = []
        c1 = cpu(port); b1, n1 = stats(port)
        mem = cli(port, "info", "memory")
        steps = runs * 5
        left = cli(port, "xlen", "steps").strip()
        return {"variant": variant, "steps": steps, "redis_cpu_us_per_step": (c1 - c0) * 1e6 / steps,
                "bytes_in_per_step": (b1 - b0) / steps, "commands_per_step": (n1 - n0) / steps,
                "stream_left": int(left)}
    finally:
        p.terminate(); p.wait(); shutil.rmtree(d, ignore_errors=True)

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50000)
    ap.add_argument("--record", type=int, default=260)
    ap.add_argument("--hist", type=int, default=180)
    ap.add_argument("--job", type=int, default=230)
    ap.add_argument("--variants", default="queue,durable,fenced,steward")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    for v in a.variants.split(","):
        r = run_variant(v, a)
        if a.json:
            print(json.dumps(r))
        else:
            print(f"{v:8} {r['redis_cpu_us_per_step']:6.1f} µs CPU/step  {r['bytes_in_per_step']:6.0f} B in/step  "
                  f"{r['commands_per_step']:5.2f} commands/step  (stream left: {r['stream_left']})")

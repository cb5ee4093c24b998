#!/usr/bin/env python3
"""Replays what a Steward worker sent Redis (captured with MONITOR) against a fresh private
redis-server, to measure the server's cost per command and per step for variants of the commit
script, with nothing else changing: the same commands, arguments and order.

  capture:  redis-cli -p PORT monitor > monitor.txt  (while `steward --redis … bench` runs)
  replay:   bench/floor/replay.py monitor.txt [--script engine/lua/commit.lua] [--repeat 3]

Commands scripts ran (MONITOR's `lua` lines) are not replayed (the script runs them again);
blocking reads lose their BLOCK; a script's SHA is mapped to the --script given (the commit
script) or to the script text SCRIPT LOAD'ed in the capture. Prints Redis's CPU time for the
replay and INFO commandstats, per step (steps = --steps, the bench's workflows × steps).
"""
import argparse, os, re, shutil, socket, subprocess, sys, tempfile, time, hashlib

def parse_line(line):
    # 1796570696.947075 [0 127.0.0.1:51436] "EVALSHA" "38d5…" "2" …
    m = re.match(r'^[0-9.]+ \[\d+ ([^\]]+)\] (.*)$', line)
    if not m:
        return None, None
    who, rest = m.group(1), m.group(2)
    args, i, n = [], 0, len(rest)
    while i < n:
        if rest[i] == ' ':
            i += 1
            continue
        assert rest[i] == '"', rest[i:i + 20]
        i += 1
        buf = bytearray()
        while rest[i] != '"':
            c = rest[i]
            if c == '\\':
                d = rest[i + 1]
                if d == 'x':
                    buf.append(int(rest[i + 2:i + 4], 16)); i += 4; continue
                buf.extend({'n': b'\n', 'r': b'\r', 't': b'\t', 'a': b'\a', 'b': b'\b',
                            '"': b'"', '\\': b'\\'}.get(d, d.encode()))
                i += 2
                continue
            buf.extend(c.encode())
            i += 1
        i += 1
        args.append(bytes(buf))
    return who, args

def resp(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)

def start_redis(aof):
    d = tempfile.mkdtemp()
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", "",
           "--logfile", os.path.join(d, "redis.log")]
    cmd += ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else ["--appendonly", "no"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        r = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True)
        if r.stdout.strip() == b"PONG":
            return p, port, d
        time.sleep(0.05)
    sys.exit("replay: redis-server did not start")

def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          check=True).stdout.decode()

def info(port, section):
    return dict(l.split(":", 1) for l in cli(port, "info", section).splitlines() if ":" in l)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("monitor")
    ap.add_argument("--script", help="the commit script to run in place of the captured one")
    ap.add_argument("--steps", type=int, required=True, help="steps the capture covers")
    ap.add_argument("--aof", action="store_true")
    a = ap.parse_args()
    cmds = []
    for line in open(a.monitor, encoding="utf-8", errors="surrogateescape"):
        who, args = parse_line(line.rstrip("\n"))
        if not args or who == "lua":
            continue
        name = args[0].upper()
        if name in (b"MONITOR", b"INFO", b"CLIENT", b"XREAD", b"SCAN", b"UNLINK"):
            continue
        if name == b"XREADGROUP":
            up = [x.upper() for x in args]
            if b"BLOCK" in up:
                i = up.index(b"BLOCK")
                args = args[:i] + args[i + 2:]
        cmds.append(args)
    # The commit script: the one whose calls carry a plan with "group" (its sha in the capture).
    commit_sha = None
    for c in cmds:
        if c[0].upper() == b"EVALSHA" and (b"batch" in c or any(b'"group"' in x for x in c[3:])):
            commit_sha = c[1]
            break
    p, port, d = start_redis(a.aof)
    try:
        loads = [c for c in cmds if c[0].upper() == b"SCRIPT"]
        for c in loads:
            subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=resp(c), check=True,
                           stdout=subprocess.DEVNULL)
        if a.script:
            text = open(a.script, "rb").read()
            sha = cli(port, "script", "load", text.decode()).strip().encode()
            cmds = [[x[0], sha, *x[2:]] if x[0].upper() == b"EVALSHA" and x[1] == commit_sha else x
                    for x in cmds]
        body = b"".join(resp(c) for c in cmds if c[0].upper() != b"SCRIPT")
        cli(port, "config", "resetstat")
        c0 = info(port, "cpu")
        out = subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=body,
                             capture_output=True)
        c1 = info(port, "cpu")
        cpu = (float(c1["used_cpu_user"]) + float(c1["used_cpu_sys"])
               - float(c0["used_cpu_user"]) - float(c0["used_cpu_sys"]))
        stats = info(port, "commandstats")
        errs = out.stdout.decode().strip().splitlines()[-1:]
        print(f"replayed {len(cmds)} commands ({', '.join(errs)}); Redis CPU "
              f"{cpu * 1e6 / a.steps:.1f} µs/step")
        rows = []
        for k, v in stats.items():
            f = dict(x.split("=") for x in v.split(","))
            rows.append((int(f["usec"]) / a.steps, int(f["calls"]) / a.steps, k[len("cmdstat_"):]))
        for us, calls, name in sorted(rows, reverse=True)[:14]:
            print(f"  {name:14} {calls:6.2f} calls/step {us:7.2f} µs/step")
    finally:
        p.terminate(); p.wait(); shutil.rmtree(d, ignore_errors=True)

if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        pass

// BullMQ chains of K no-op steps: each step's job, when processed, adds the next step's job
// (BullMQ has no atomic "complete this and enqueue that"; this is how its users chain steps).
// Measured like `steward bench`: burst (all workflows at once), serial (one at a time) or an
// open loop (--rate R for --duration S), worker concurrency C, in one process with its worker.
// Prints one JSON object: workflows/s, steps/s, p50/p90/p99/max end to end, and Redis's own
// CPU µs, bytes in/out and commands per step from INFO (every client counted, as Steward's).
'use strict';
const { Queue, Worker } = require('bullmq');
const IORedis = require('ioredis');

function args() {
  const a = { workflows: 2000, steps: 5, concurrency: 64, serial: false, rate: null, duration: 10, redis: 'redis://127.0.0.1:6379' };
  const v = process.argv.slice(2);
  for (let i = 0; i < v.length; i++) {
    const k = v[i].replace(/^--/, '');
    if (k === 'serial') a.serial = true;
    else if (k in a) a[k] = k === 'redis' ? v[++i] : Number(v[++i]);
    else { console.error(`unknown argument ${v[i]}`); process.exit(2); }
  }
  return a;
}

async function info(conn) {
  const text = await conn.info();
  const f = (name) => {
    const m = text.match(new RegExp(`^${name}:([0-9.]+)`, 'm'));
    return m ? Number(m[1]) : 0;
  };
  return {
    cpu: f('used_cpu_user') + f('used_cpu_sys'),
    bytesIn: f('total_net_input_bytes'),
    bytesOut: f('total_net_output_bytes'),
    commands: f('total_commands_processed'),
    reads: f('total_reads_processed'),
    writes: f('total_writes_processed'),
  };
}

function pct(sorted, q) {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.round((sorted.length - 1) * q))];
}

async function main() {
  const a = args();
  const conn = () => new IORedis(a.redis, { maxRetriesPerRequest: null });
  const admin = conn();
  const name = `chains-${Date.now()}`;
  const queue = new Queue(name, { connection: conn() });
  const waiting = new Map(); // workflow id -> { t0, resolve }
  const worker = new Worker(
    name,
    async (job) => {
      const { wf, step } = job.data;
      if (step + 1 < a.steps) {
        await queue.add('s', { wf, step: step + 1 }, { removeOnComplete: true, removeOnFail: true });
      } else {
        const w = waiting.get(wf);
        if (w) { waiting.delete(wf); w.resolve(performance.now() - w.t0); }
      }
    },
    { connection: conn(), concurrency: a.concurrency }
  );
  await worker.waitUntilReady();
  let next = 0;
  const start = (t0) => {
    const wf = next++;
    const done = new Promise((resolve) => waiting.set(wf, { t0, resolve }));
    return queue.add('s', { wf, step: 0 }, { removeOnComplete: true, removeOnFail: true }).then(() => done);
  };
  // Warm up, as steward bench does.
  await Promise.all(Array.from({ length: Math.min(50, a.workflows) }, () => start(performance.now())));

  const before = await info(admin);
  const cpuBefore = process.cpuUsage();
  const t0 = performance.now();
  let latencies = [];
  let mode;
  if (a.rate) {
    mode = 'open loop';
    const total = Math.max(1, Math.round(a.rate * a.duration));
    const interval = 1000 / a.rate;
    const runs = [];
    for (let i = 0; i < total; i++) {
      const due = t0 + i * interval;
      const wait = due - performance.now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      runs.push(start(due));
    }
    latencies = await Promise.all(runs);
  } else if (a.serial) {
    mode = 'serial';
    for (let i = 0; i < a.workflows; i++) latencies.push(await start(performance.now()));
  } else {
    mode = 'burst';
    const s = performance.now();
    latencies = await Promise.all(Array.from({ length: a.workflows }, () => start(s)));
  }
  const elapsed = (performance.now() - t0) / 1000;
  const after = await info(admin);
  const cpuAfter = process.cpuUsage();
  const n = latencies.length;
  const steps = n * a.steps;
  latencies.sort((x, y) => x - y);
  const out = {
    peer: `bullmq ${require('bullmq/package.json').version} chains`,
    mode,
    workflows: n,
    steps: a.steps,
    concurrency: a.concurrency,
    target_rate: a.rate,
    workflows_per_s: n / elapsed,
    steps_per_s: steps / elapsed,
    p50_ms: pct(latencies, 0.5),
    p90_ms: pct(latencies, 0.9),
    p99_ms: pct(latencies, 0.99),
    max_ms: pct(latencies, 1),
    redis_cpu_us_per_step: ((after.cpu - before.cpu) * 1e6) / steps,
    redis_bytes_in_per_step: (after.bytesIn - before.bytesIn) / steps,
    redis_bytes_out_per_step: (after.bytesOut - before.bytesOut) / steps,
    redis_commands_per_step: (after.commands - before.commands) / steps,
    redis_reads_per_step: (after.reads - before.reads) / steps,
    redis_writes_per_step: (after.writes - before.writes) / steps,
    process_cpu_us_per_step: (cpuAfter.user + cpuAfter.system - cpuBefore.user - cpuBefore.system) / steps,
    elapsed_s: elapsed,
  };
  console.log(JSON.stringify(out));
  await worker.close();
  await queue.obliterate({ force: true }).catch(() => {});
  await queue.close();
  admin.disconnect();
  process.exit(0);
}

main().catch((e) => { console.error(e); process.exit(1); });

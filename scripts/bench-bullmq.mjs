// The BullMQ side of `scripts/bench jobs --vs bullmq`: the same figures as Lectern's, with BullMQ's
// defaults and one Worker at concurrency 50, against the same Redis on loopback. It uses its own
// Redis database (BENCH_BULLMQ_REDIS_DB, default 15) and key prefix, emptied before each figure,
// so it never touches Lectern's keys. `scripts/bench` installs BullMQ into a scratch folder and runs
// this file from there; lectern-bench runs it between its own figures and reads the JSON it prints.
//
//   node bench-bullmq.mjs drain N         N preloaded no-op jobs: first start to last finish
//   node bench-bullmq.mjs latency RATE S  add-to-start at a steady RATE jobs/s for S seconds
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";

const [mode, a, b] = process.argv.slice(2);
const connection = {
  host: process.env.BENCH_BULLMQ_REDIS_HOST ?? "127.0.0.1",
  port: Number(process.env.BENCH_BULLMQ_REDIS_PORT ?? 6379),
  db: Number(process.env.BENCH_BULLMQ_REDIS_DB ?? 15),
  maxRetriesPerRequest: null,
};
const prefix = "lectern-bench-bullmq";
const name = "noop";
const concurrency = 50;

async function flush() {
  const redis = new IORedis(connection);
  let cursor = "0";
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 10000);
    cursor = next;
    if (keys.length) await redis.unlink(...keys);
  } while (cursor !== "0");
  await redis.quit();
}

function percentile(sorted, p) {
  const i = Math.min(Math.max(Math.ceil(sorted.length * p), 1), sorted.length) - 1;
  return sorted[i] ?? 0;
}

async function drain(n) {
  await flush();
  const queue = new Queue(name, { connection, prefix });
  const loading = performance.now();
  for (let i = 0; i < n; i += 1000) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + 1000); j++) batch.push({ name: "noop", data: { i: j } });
    await queue.addBulk(batch);
  }
  const loadedIn = (performance.now() - loading) / 1000;
  let first = null;
  let done = 0;
  let finished;
  const allDone = new Promise((resolve) => (finished = resolve));
  const worker = new Worker(
    name,
    async () => {
      if (first === null) first = performance.now();
    },
    { connection, prefix, concurrency },
  );
  worker.on("completed", () => {
    done += 1;
    if (done === n) finished(performance.now());
  });
  const spawned = performance.now();
  const last = await Promise.race([
    allDone,
    new Promise((resolve) => setTimeout(() => resolve(null), 600_000)),
  ]);
  const seconds = ((last ?? performance.now()) - first) / 1000;
  const rss = process.memoryUsage().rss;
  await worker.close();
  await queue.close();
  await flush();
  return {
    done,
    jobs_per_s: done / seconds,
    window_s: seconds,
    from_start_s: ((last ?? performance.now()) - spawned) / 1000,
    loaded_in_s: loadedIn,
    rss_mb: rss / 1e6,
  };
}

async function latency(rate, seconds) {
  await flush();
  const queue = new Queue(name, { connection, prefix });
  const waits = [];
  const worker = new Worker(
    name,
    async (job) => {
      // Adds and starts happen in this one process: one monotonic clock.
      waits.push(performance.now() - job.data.at);
    },
    { connection, prefix, concurrency },
  );
  await worker.waitUntilReady();
  await new Promise((r) => setTimeout(r, 1000));
  const total = rate * seconds;
  const started = performance.now();
  const adds = [];
  for (let i = 0; i < total; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    adds.push(queue.add("noop", { at: performance.now() }));
  }
  await Promise.all(adds);
  const deadline = performance.now() + 60_000;
  while (waits.length < total && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const rss = process.memoryUsage().rss;
  await worker.close();
  await queue.close();
  await flush();
  waits.sort((x, y) => x - y);
  return {
    jobs: waits.length,
    p50_ms: percentile(waits, 0.5),
    p99_ms: percentile(waits, 0.99),
    max_ms: waits[waits.length - 1] ?? 0,
    rss_mb: rss / 1e6,
  };
}

const result =
  mode === "drain"
    ? await drain(Number(a ?? 100000))
    : mode === "latency"
      ? await latency(Number(a ?? 200), Number(b ?? 10))
      : null;
if (result === null) {
  console.error("usage: bench-bullmq.mjs drain N | latency RATE SECONDS");
  process.exit(2);
}
console.log(JSON.stringify(result));
process.exit(0);

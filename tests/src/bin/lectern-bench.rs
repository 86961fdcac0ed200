//! Benchmarks that drive the real `lectern-api` and `lectern-worker` binaries, with real PostgreSQL
//! and Redis. Run with `scripts/bench [auth|jobs]` (release build). Prints figures; asserts nothing.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use lectern_tests::{Options, TestApp};
use serde_json::json;

struct Figures {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn print(&mut self, what: &str) {
        self.latencies.sort();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 * p).ceil() as usize)
                .clamp(1, self.latencies.len().max(1))
                - 1;
            self.latencies
                .get(i)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "{what:<34} {:>9.1} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} requests, {} errors, {:.1} s)",
            self.requests as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            self.requests,
            self.errors,
            self.elapsed.as_secs_f64()
        );
    }
}

/// Runs `concurrency` loops of `request` for `duration`, recording each latency.
async fn load<F, Fut>(concurrency: usize, duration: Duration, request: F) -> Figures
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0);
            while started.elapsed() < duration {
                let t = Instant::now();
                if !request().await {
                    errors += 1;
                }
                lat.push(t.elapsed());
            }
            (lat, errors)
        }));
    }
    let mut figures = Figures {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (lat, errors) = task.await.unwrap();
        figures.requests += lat.len();
        figures.errors += errors;
        figures.latencies.extend(lat);
    }
    figures.elapsed = started.elapsed();
    figures
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".to_owned());
    if what == "auth" || what == "all" {
        auth(seconds).await;
    }
    let vs = std::env::args().skip(2).collect::<Vec<_>>().join(" ");
    if what == "jobs" && vs == "--vs bullmq" {
        vs_bullmq(seconds).await;
    } else if what == "jobs" || what == "all" {
        jobs(seconds).await;
    }
}

async fn auth(seconds: u64) {
    let duration = Duration::from_secs(seconds);
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![
            ("RATE_LIMITS".into(), "off".into()),
            ("DATABASE_MAX_CONNECTIONS".into(), "20".into()),
        ],
    })
    .await;
    let registered = app.register("bench@example.com", "student").await;
    let token = registered["access_token"].as_str().unwrap().to_owned();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "lectern-api auth benchmark: {cores} cores, {seconds} s per figure, API and PostgreSQL and Redis on loopback"
    );

    let http = app.http.clone();
    let url = format!("{}/api/v1/auth/login", app.url);
    let mut logins = load(8, duration, move || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(&url)
                .json(&json!({"email": "bench@example.com", "password": "correct horse battery"}))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    logins.print("POST /auth/login (argon2id)");

    let http = app.http.clone();
    let url = format!("{}/api/v1/me", app.url);
    let mut me = load(32, duration, move || {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            http.get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    me.print("GET /me (JWT + session check)");

    let http = app.http.clone();
    let url = format!("{}/healthz", app.url);
    let mut health = load(32, duration, move || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    health.print("GET /healthz (no auth, baseline)");
    println!(
        "lectern-api peak RSS (auth run): {}",
        peak_rss(app.api.pid())
    );
}

/// The process's peak resident set size, as the kernel reports it.
fn peak_rss(pid: u32) -> String {
    proc_status(pid, "VmHWM")
}

/// The process's resident set size now.
fn rss(pid: u32) -> String {
    proc_status(pid, "VmRSS")
}

fn proc_status(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l[field.len() + 1..].trim().to_owned())
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------------
// Jobs: the enqueue path the API uses (`jobs::insert` in a transaction, COMMIT, `JobQueue`
// dispatch), the real `lectern-worker` processes, PostgreSQL and Redis on loopback.

use lectern_core::Services;
use lectern_core::jobs::{self as job_queue, Job, Noop, Queue};

/// Jobs preloaded for each drain figure (`BENCH_DRAIN_JOBS` overrides it).
const DRAIN_JOBS: usize = 100_000;
/// Jobs per transaction in the batched enqueue.
const ENQUEUE_BATCH: usize = 1000;
/// Jobs per transaction in the drains' preload (`JobQueue::enqueue_bulk`, pipelined);
/// `BENCH_BULK_BATCH` overrides it.
const BULK_BATCH: usize = 5000;

fn bulk_batch() -> usize {
    std::env::var("BENCH_BULK_BATCH")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(BULK_BATCH)
}
/// Jobs per second for the enqueue-to-start figure.
const STEADY_RATE: u64 = 200;

fn noop() -> Job {
    Job::Noop(Noop {
        sleep_ms: 0,
        record: false,
        queue: Queue::Default,
        fail: None,
    })
}

/// Core services of the benchmark's own (the API's code, in this process) against the app's
/// database and Redis prefix.
fn services(app: &TestApp) -> Services {
    let config = lectern_core::config::Config::from_source(|k| match k {
        "DATABASE_MAX_CONNECTIONS" => Some("20".to_owned()),
        _ => app.env.get(k).cloned(),
    })
    .expect("configuration");
    Services::new(config).expect("services")
}

/// One job, as a service enqueues it: its own transaction, then dispatch.
async fn enqueue_one(services: &Services) -> bool {
    let result = async {
        let mut tx = services.db.begin().await?;
        let job = job_queue::insert(&mut tx, &noop(), None, None).await?;
        tx.commit().await?;
        services.jobs.dispatch(&job).await;
        Ok::<_, lectern_core::Error>(())
    }
    .await;
    result.is_ok()
}

/// `n` jobs in one transaction (one multi-row INSERT), dispatched in one Redis round trip.
async fn enqueue_batch(services: &Services, n: usize) -> bool {
    let batch = vec![noop(); n];
    let result = async {
        let mut tx = services.db.begin().await?;
        let jobs = job_queue::insert_many(&mut tx, &batch, None).await?;
        tx.commit().await?;
        services.jobs.dispatch_many(&jobs).await;
        Ok::<_, lectern_core::Error>(())
    }
    .await;
    result.is_ok()
}

async fn count_state(app: &TestApp, state: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = $1")
        .bind(state)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

/// Wall-clock time as PostgreSQL's `now()` sees it (same host, same clock).
fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied().unwrap_or(0.0)
}

async fn jobs(seconds: u64) {
    let duration = Duration::from_secs(seconds);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let drain_concurrency =
        std::env::var("BENCH_DRAIN_CONCURRENCY").unwrap_or_else(|_| "256".to_owned());
    let drain_jobs: usize = std::env::var("BENCH_DRAIN_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| n % ENQUEUE_BATCH == 0 && *n > 0)
        .unwrap_or(DRAIN_JOBS);
    println!(
        "lectern job benchmarks: {cores} cores, PostgreSQL and Redis on loopback, no-op jobs (`noop` kind)"
    );

    // Enqueue rate, no worker running.
    {
        let app = TestApp::spawn_with(Options {
            no_worker: true,
            env: vec![],
        })
        .await;
        let services = Arc::new(services(&app));
        let s = Arc::clone(&services);
        let mut single = load(8, duration, move || {
            let s = Arc::clone(&s);
            async move { enqueue_one(&s).await }
        })
        .await;
        single.print("enqueue, 1 job per transaction");
        let s = Arc::clone(&services);
        let batched = load(2, duration, move || {
            let s = Arc::clone(&s);
            async move { enqueue_batch(&s, ENQUEUE_BATCH).await }
        })
        .await;
        println!(
            "{:<34} {:>9.0} jobs/s  ({} batches of {ENQUEUE_BATCH}, {} errors, 2 concurrent, {:.1} s)",
            "enqueue, batched (insert_many)",
            (batched.requests * ENQUEUE_BATCH) as f64 / batched.elapsed.as_secs_f64(),
            batched.requests,
            batched.errors,
            batched.elapsed.as_secs_f64()
        );
        println!(
            "{:<34} {:>9.0} jobs/s  (8 concurrent callers)",
            "enqueue, single",
            single.requests as f64 / single.elapsed.as_secs_f64()
        );
    }

    // Drain: DRAIN_JOBS no-op jobs already queued (in PostgreSQL and Redis), then the workers start.
    for workers in [1usize, 2] {
        lectern_drain(workers, drain_jobs, &drain_concurrency).await;
    }

    lectern_latency(seconds, "4").await;
}

/// Enqueue-to-start figures of one run.
struct Latency {
    p50: f64,
    p99: f64,
    commit_p99: f64,
    /// A bare one-row commit at the same rate (the floor under a durable enqueue).
    commit_floor_p99: f64,
    /// Enqueue-to-start with the enqueue committed without waiting for its WAL flush.
    no_flush_p50: f64,
    no_flush_p99: f64,
    rss_after_kb: f64,
}

fn kb(field: &str) -> f64 {
    field
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Enqueue-to-start at a steady rate, one worker with the default configuration.
async fn lectern_latency(seconds: u64, default_slots: &str) -> Latency {
    let mut env = vec![("RUST_LOG".into(), "info".into())];
    // BENCH_LATENCY_CONCURRENCY: the worker's default-queue slots (the configuration's 4 otherwise).
    let slots =
        std::env::var("BENCH_LATENCY_CONCURRENCY").unwrap_or_else(|_| default_slots.to_owned());
    env.push(("WORKER_CONCURRENCY_DEFAULT".into(), slots.clone()));
    let app = TestApp::spawn_with(Options {
        no_worker: false,
        env,
    })
    .await;
    let services = Arc::new(services(&app));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let worker_pid = app.worker.as_ref().map(|w| w.pid()).unwrap_or_default();
    let at_rest = rss(worker_pid);
    // The floor under any PostgreSQL-backed enqueue on this machine: one-row INSERTs, each
    // its own transaction (one WAL flush), at the same rate.
    sqlx::query("CREATE TABLE bench_commits (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
            .execute(&app.db.pool)
            .await
            .unwrap();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / STEADY_RATE as u32);
    let mut commits = tokio::task::JoinSet::new();
    for _ in 0..STEADY_RATE * seconds.min(5) {
        ticker.tick().await;
        let pool = app.db.pool.clone();
        commits.spawn(async move {
            let t = Instant::now();
            let ok = sqlx::query("INSERT INTO bench_commits DEFAULT VALUES")
                .execute(&pool)
                .await
                .is_ok();
            (ok, t.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut commit_ms = Vec::new();
    while let Some(joined) = commits.join_next().await {
        let (ok, ms) = joined.unwrap();
        if ok {
            commit_ms.push(ms);
        }
    }
    commit_ms.sort_by(f64::total_cmp);
    println!(
        "{:<34} p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>7.2} ms   ({} one-row INSERT transactions at {STEADY_RATE}/s: this machine's floor)",
        "PostgreSQL commit alone",
        percentile(&commit_ms, 0.50),
        percentile(&commit_ms, 0.99),
        commit_ms.last().copied().unwrap_or(0.0),
        commit_ms.len(),
    );
    let durable = steady_enqueue(&app, &services, seconds, &slots, true).await;
    // The same with the enqueue's transaction committed without waiting for its WAL flush, as
    // BullMQ's enqueue (a Redis write) does not wait for a disk either: the comparison at equal
    // durability. Lectern's enqueues stay durable; this is a measurement only.
    let no_flush = steady_enqueue(&app, &services, seconds, &slots, false).await;
    // At rest again, after it has run jobs: what a deployment pays per idle worker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(worker_pid);
    println!(
        "{:<34} {at_rest} at rest before any job, {after} at rest after the jobs, peak {}; {} threads",
        "lectern-worker RSS",
        peak_rss(worker_pid),
        proc_status(worker_pid, "Threads"),
    );
    Latency {
        p50: durable.p50,
        p99: durable.p99,
        commit_p99: durable.commit_p99,
        commit_floor_p99: percentile(&commit_ms, 0.99),
        no_flush_p50: no_flush.p50,
        no_flush_p99: no_flush.p99,
        rss_after_kb: kb(&after),
    }
}

/// Enqueue-to-start of one steady phase.
struct Steady {
    p50: f64,
    p99: f64,
    commit_p99: f64,
}

/// Enqueues `STEADY_RATE` jobs a second for `seconds` (each its own transaction, then its push),
/// waits for them to run, and prints enqueue-to-start and its COMMIT-to-start part. `durable`:
/// the enqueue's `COMMIT` waits for its WAL flush (Lectern's behaviour); otherwise that one
/// transaction commits with `synchronous_commit = off`.
async fn steady_enqueue(
    app: &TestApp,
    services: &Arc<Services>,
    seconds: u64,
    slots: &str,
    durable: bool,
) -> Steady {
    let total = (STEADY_RATE * seconds) as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / STEADY_RATE as u32);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..total {
        ticker.tick().await;
        let s = Arc::clone(services);
        calls.spawn(async move {
            let t = Instant::now();
            // enqueue_one, noting when the row is committed (the worker can see it from then).
            let queued = async {
                let mut tx = s.db.begin().await?;
                if !durable {
                    sqlx::query("SET LOCAL synchronous_commit = off")
                        .execute(&mut *tx)
                        .await?;
                }
                let job = job_queue::insert(&mut tx, &noop(), None, None).await?;
                tx.commit().await?;
                let committed = unix_seconds();
                s.jobs.dispatch(&job).await;
                Ok::<_, lectern_core::Error>((job.id, committed))
            }
            .await;
            (queued.ok(), t.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut enqueue_ms = Vec::with_capacity(total);
    let mut committed_at = std::collections::HashMap::new();
    let mut errors = 0;
    while let Some(joined) = calls.join_next().await {
        let (queued, ms) = joined.unwrap();
        match queued {
            Some((id, committed)) => {
                committed_at.insert(id, committed);
            }
            None => errors += 1,
        }
        enqueue_ms.push(ms);
    }
    let ids: Vec<uuid::Uuid> = committed_at.keys().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE id = ANY($1) AND state = 'succeeded'",
        )
        .bind(&ids)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        if done as usize >= ids.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<(uuid::Uuid, f64, f64)> = sqlx::query_as(
        "SELECT id, EXTRACT(EPOCH FROM started_at - created_at)::float8 * 1000,
                EXTRACT(EPOCH FROM started_at)::float8
           FROM jobs WHERE id = ANY($1) AND started_at IS NOT NULL",
    )
    .bind(&ids)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let mut waits: Vec<f64> = rows.iter().map(|(_, wait, _)| *wait).collect();
    waits.sort_by(f64::total_cmp);
    enqueue_ms.sort_by(f64::total_cmp);
    // The queue's own part: from COMMIT (the row exists) to the worker's claim.
    let mut commit_to_start: Vec<f64> = rows
        .iter()
        .filter_map(|(id, _, started)| committed_at.get(id).map(|c| (started - c) * 1000.0))
        .collect();
    commit_to_start.sort_by(f64::total_cmp);
    let over_50ms = commit_to_start.iter().filter(|ms| **ms > 50.0).count();
    // Slow starts by 50 ms bucket: a wake-up lost to the 250 ms poll spreads them evenly
    // up to 250 ms; a stalled process or machine bunches them.
    let mut buckets = [0usize; 6];
    for ms in commit_to_start.iter().filter(|ms| **ms > 50.0) {
        buckets[((*ms / 50.0) as usize).min(5)] += 1;
    }
    let label = if durable {
        "enqueue-to-start"
    } else {
        "enqueue-to-start, no-flush enqueue"
    };
    println!(
        "{label:<34} p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>7.2} ms   ({} jobs at {STEADY_RATE}/s, {errors} errors, 1 worker, {slots} default-queue slots{})",
        percentile(&waits, 0.50),
        percentile(&waits, 0.99),
        waits.last().copied().unwrap_or(0.0),
        waits.len(),
        if durable {
            ""
        } else {
            "; the enqueue commits with synchronous_commit = off, for comparison only"
        },
    );
    println!(
        "{:<34} p50 {:>6.2} ms   p99 {:>6.2} ms   (the enqueue call alone: transaction, COMMIT, push, mark dispatched)",
        "  of which enqueue",
        percentile(&enqueue_ms, 0.50),
        percentile(&enqueue_ms, 0.99),
    );
    println!(
        "{:<34} p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>7.2} ms   (push, wake-up, fetch, claim; {over_50ms} over 50 ms, by 50 ms bucket from 50: {:?})",
        "  from COMMIT to start",
        percentile(&commit_to_start, 0.50),
        percentile(&commit_to_start, 0.99),
        commit_to_start.last().copied().unwrap_or(0.0),
        &buckets[1..],
    );
    Steady {
        p50: percentile(&waits, 0.50),
        p99: percentile(&waits, 0.99),
        commit_p99: percentile(&commit_to_start, 0.99),
    }
}

/// What bounds the batched enqueue on this machine: the same `n` no-op rows written with a bare
/// `COPY … FROM STDIN` into a copy of the jobs table (its indexes and checks, no Lectern code;
/// `per_transaction` rows per durable commit), and `n` ids pushed with Lectern's pipelined Redis
/// push alone (into a scratch prefix, deleted afterwards). Returns both rates (jobs/s).
async fn enqueue_floors(
    app: &TestApp,
    services: &Services,
    n: usize,
    per_transaction: usize,
) -> (f64, f64) {
    let pool = &app.db.pool;
    sqlx::query("CREATE TABLE bench_copy (LIKE jobs INCLUDING ALL)")
        .execute(pool)
        .await
        .unwrap();
    let payload = serde_json::to_string(&noop().payload_json()).unwrap();
    let payload = payload.replace('\\', "\\\\");
    let started = Instant::now();
    let mut left = n;
    while left > 0 {
        let rows = left.min(per_transaction);
        left -= rows;
        let mut text = String::with_capacity(rows * (payload.len() + 64));
        for _ in 0..rows {
            text.push_str(&format!(
                "{}\tnoop\tdefault\t{payload}\t3\t{}\n",
                uuid::Uuid::now_v7(),
                chrono::Utc::now().to_rfc3339()
            ));
        }
        let mut tx = pool.begin().await.unwrap();
        let mut copy = tx
            .copy_in_raw(
                "COPY bench_copy (id, kind, queue, payload, max_attempts, dispatched_at) FROM STDIN",
            )
            .await
            .unwrap();
        copy.send(text.into_bytes()).await.unwrap();
        copy.finish().await.unwrap();
        tx.commit().await.unwrap();
    }
    let copy_rate = n as f64 / started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_copy")
        .execute(pool)
        .await
        .unwrap();

    let floor_prefix = format!("{}floor", app.prefix);
    let queue =
        lectern_core::jobs::JobQueue::new(pool.clone(), services.redis.clone(), &floor_prefix);
    let ids: Vec<(uuid::Uuid, Queue)> = (0..n)
        .map(|_| (uuid::Uuid::now_v7(), Queue::Default))
        .collect();
    let started = Instant::now();
    for group in ids.chunks(per_transaction) {
        queue.push_now(group).await.unwrap();
    }
    let push_rate = n as f64 / started.elapsed().as_secs_f64();
    let mut conn = services.redis.clone();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{floor_prefix}-*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    println!(
        "{:<34} {copy_rate:>9.0} jobs/s  (bare COPY of the same rows into a copy of the jobs table, {per_transaction} per durable commit)",
        "  floor: PostgreSQL alone"
    );
    println!(
        "{:<34} {push_rate:>9.0} jobs/s  (Lectern's pipelined push alone, {} ids per MULTI)",
        "  floor: Redis alone",
        lectern_core::jobs::PUSH_CHUNK
    );
    (copy_rate, push_rate)
}

/// Drains `drain_jobs` preloaded no-op jobs with `workers` fresh worker processes; jobs/s from the
/// first start to the last finish (PostgreSQL's timestamps), and the rate of the preload (batched
/// enqueue: one caller, 1,000 jobs per transaction, then their push).
async fn lectern_drain(
    workers: usize,
    drain_jobs: usize,
    drain_concurrency: &str,
) -> (f64, f64, Option<(f64, f64)>) {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![
            (
                "WORKER_CONCURRENCY_DEFAULT".into(),
                drain_concurrency.to_owned(),
            ),
            ("RUST_LOG".into(), "warn".into()),
        ],
    })
    .await;
    let services = services(&app);
    let per_transaction = bulk_batch();
    let floors = if workers == 1 {
        Some(enqueue_floors(&app, &services, drain_jobs, per_transaction).await)
    } else {
        None
    };
    let batch = vec![noop(); drain_jobs];
    let loading = Instant::now();
    let queued = services
        .jobs
        .enqueue_bulk(&batch, None, per_transaction)
        .await
        .expect("preload");
    let loaded_in = loading.elapsed();
    assert_eq!(queued.len(), drain_jobs, "preload");
    println!(
        "{:<34} {:>9.0} jobs/s  (enqueue_bulk: {per_transaction} per transaction, next write pipelined with this push)",
        "  preload (batched enqueue)",
        drain_jobs as f64 / loaded_in.as_secs_f64()
    );
    let spawned = Instant::now();
    let procs: Vec<_> = (0..workers)
        .map(|i| app.spawn_worker(&format!("drain-{i}.log")))
        .collect();
    let deadline = spawned + Duration::from_secs(600);
    let mut done = 0;
    while Instant::now() < deadline {
        done = count_state(&app, "succeeded").await + count_state(&app, "failed").await;
        if done as usize >= drain_jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = spawned.elapsed();
    let (window, attempts, failed): (Option<f64>, Option<i64>, i64) = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM max(finished_at) - min(started_at))::float8, sum(attempts)::int8,
                count(*) FILTER (WHERE state = 'failed')
           FROM jobs WHERE state IN ('succeeded', 'failed')",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    let window = window.unwrap_or(f64::NAN);
    let label = if workers == 1 {
        "drain, 1 worker process".to_owned()
    } else {
        format!("drain, {workers} worker processes")
    };
    let rate = done as f64 / window;
    println!(
        "{label:<34} {rate:>9.0} jobs/s  ({done} of {drain_jobs} done, {failed} failed, {} attempts; first start to last finish {window:.2} s, {:.2} s from process start; preloaded in {:.1} s)",
        attempts.unwrap_or(0),
        wall.as_secs_f64(),
        loaded_in.as_secs_f64()
    );
    for p in &procs {
        println!(
            "{:<34} peak RSS {}  (WORKER_CONCURRENCY_DEFAULT={drain_concurrency}, RUST_LOG=warn)",
            "  lectern-worker",
            peak_rss(p.pid())
        );
    }
    (rate, drain_jobs as f64 / loaded_in.as_secs_f64(), floors)
}

// ------------------------------------------------------------------------------------------------
// `jobs --vs bullmq`: BullMQ (installed by `scripts/bench` into BENCH_BULLMQ_DIR, with
// scripts/bench-bullmq.mjs beside it) drains the same number of no-op jobs, one Worker at
// concurrency 50 and its defaults, in its own Redis database; the runs alternate with Lectern's.

fn bullmq(args: &[&str]) -> Option<serde_json::Value> {
    let dir = std::env::var("BENCH_BULLMQ_DIR").ok()?;
    let out = std::process::Command::new("node")
        .arg(format!("{dir}/bench-bullmq.mjs"))
        .args(args)
        .current_dir(&dir)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("bullmq: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn stats(values: &[f64]) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.as_slice() {
        [] => "n/a".to_owned(),
        [one] => format!("{one:.0}"),
        _ => format!(
            "{:.0} (range {:.0}-{:.0}, {} rounds)",
            median(&v),
            v[0],
            v[v.len() - 1],
            v.len()
        ),
    }
}

async fn vs_bullmq(seconds: u64) {
    let jobs: usize = std::env::var("BENCH_JOBS")
        .or_else(|_| std::env::var("BENCH_DRAIN_JOBS"))
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| n % ENQUEUE_BATCH == 0 && *n > 0)
        .unwrap_or(DRAIN_JOBS);
    let rounds: usize = std::env::var("BENCH_VS_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let concurrency = std::env::var("BENCH_DRAIN_CONCURRENCY").unwrap_or_else(|_| "256".to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Lectern vs BullMQ: {cores} cores, PostgreSQL and Redis on loopback, {jobs} preloaded no-op jobs per drain, {rounds} rounds interleaved"
    );
    let (mut ours, mut theirs, mut enqueued) = (Vec::new(), Vec::new(), Vec::new());
    let (mut copy_floor, mut push_floor) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        println!("-- round {round}");
        let (drained, preloaded, floors) = lectern_drain(1, jobs, &concurrency).await;
        ours.push(drained);
        enqueued.push(preloaded);
        if let Some((copy, push)) = floors {
            copy_floor.push(copy);
            push_floor.push(push);
        }
        match bullmq(&["drain", &jobs.to_string()]) {
            Some(r) => {
                let rate = r["jobs_per_s"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "{:<34} {rate:>9.0} jobs/s  ({} of {jobs} done; first start to last finish {:.2} s; preloaded in {:.1} s; node RSS {:.1} MB)",
                    "drain, BullMQ (1 Worker, c=50)",
                    r["done"],
                    r["window_s"].as_f64().unwrap_or(f64::NAN),
                    r["loaded_in_s"].as_f64().unwrap_or(f64::NAN),
                    r["rss_mb"].as_f64().unwrap_or(f64::NAN),
                );
                theirs.push(rate);
            }
            None => println!("drain, BullMQ: did not run (BENCH_BULLMQ_DIR unset or node failed)"),
        }
    }
    println!("-- enqueue-to-start at {STEADY_RATE}/s, {seconds} s each");
    // One worker at concurrency 50 on each side, as BullMQ runs (BENCH_LATENCY_CONCURRENCY
    // changes Lectern's).
    let latency = lectern_latency(seconds, "50").await;
    let theirs_latency = bullmq(&["latency", &STEADY_RATE.to_string(), &seconds.to_string()]);
    if let Some(r) = &theirs_latency {
        println!(
            "{:<34} p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>7.2} ms   ({} jobs, 1 Worker, c=50; node RSS {:.1} MB)",
            "enqueue-to-start, BullMQ",
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["max_ms"].as_f64().unwrap_or(f64::NAN),
            r["jobs"],
            r["rss_mb"].as_f64().unwrap_or(f64::NAN),
        );
    }
    let their_p99 = theirs_latency
        .as_ref()
        .and_then(|r| r["p99_ms"].as_f64())
        .unwrap_or(f64::NAN);
    println!("== summary (goal in brackets)");
    println!("drain, Lectern 1 worker      {} jobs/s", stats(&ours));
    println!("drain, BullMQ 1 worker       {} jobs/s", stats(&theirs));
    println!(
        "batched enqueue (preload)    {} jobs/s  [>= 100,000]  (1 caller, enqueue_bulk, {} per transaction, pipelined)",
        stats(&enqueued),
        bulk_batch()
    );
    println!(
        "  floor: bare COPY           {} jobs/s  (PostgreSQL alone, same rows and commits)",
        stats(&copy_floor)
    );
    println!(
        "  floor: bare Redis push     {} jobs/s  (pipelined, no PostgreSQL)",
        stats(&push_floor)
    );
    println!(
        "drain ratio Lectern/BullMQ   {:.2}x  [>= 1.5x]  (per round: {})",
        median(&ours) / median(&theirs),
        ours.iter()
            .zip(&theirs)
            .map(|(a, b)| format!("{:.2}", a / b))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "enqueue-to-start p99         Lectern {:.2} ms (p50 {:.2}), BullMQ {their_p99:.2} ms  [Lectern <= BullMQ]",
        latency.p99, latency.p50
    );
    println!(
        "  bare PostgreSQL commit p99 {:.2} ms  (the durable enqueue's own floor, same run)",
        latency.commit_floor_p99
    );
    println!(
        "  no-flush enqueue p99       {:.2} ms (p50 {:.2})  (the enqueue's COMMIT without its WAL flush, like BullMQ's Redis write: comparison only)",
        latency.no_flush_p99, latency.no_flush_p50
    );
    println!(
        "COMMIT-to-start p99          {:.2} ms  [<= 5 ms]",
        latency.commit_p99
    );
    println!(
        "worker RSS at rest after jobs {:.1} MiB  [<= 40 MB]",
        latency.rss_after_kb / 1024.0
    );
}

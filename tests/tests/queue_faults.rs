//! Redis is a cache of the job table: whatever Redis does (flushed, restarted without
//! persistence, keys lost, full, or PostgreSQL failing the claim), no committed job is lost and
//! none runs twice. Each test starts its own Redis, so flushing or restarting it never disturbs
//! the shared one other tests use.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lectern_tests::{Options, TestApp, free_port, scratch_dir};
use serde_json::Value;

/// A `redis-server` of this test's own, without persistence, killed on drop.
struct TestRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl TestRedis {
    fn start() -> TestRedis {
        let mut redis = TestRedis {
            port: free_port(),
            dir: scratch_dir("redis"),
            child: None,
        };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills Redis and starts it again on the same port: without persistence, empty.
    fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect the test Redis")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn app_on(redis: &TestRedis, worker: bool) -> TestApp {
    TestApp::spawn_with(Options {
        no_worker: !worker,
        env: vec![("REDIS_URL".into(), redis.url())],
    })
    .await
}

/// Ids of the email jobs, with whether each was pushed to Redis (dispatched).
async fn email_jobs(app: &TestApp) -> Vec<(String, bool)> {
    sqlx::query_as(
        "SELECT id::text, dispatched_at IS NOT NULL FROM jobs WHERE queue = 'email' ORDER BY created_at",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
}

/// Mails delivered to `to`.
fn mails_to(app: &TestApp, to: &str) -> usize {
    app.smtp
        .messages()
        .iter()
        .filter(|m| m.recipients.iter().any(|r| r == to))
        .count()
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    app.get("/readyz").await
}

/// Waits until the workers have stamped Redis's epoch (`/readyz` carries no note about it).
async fn wait_for_epoch(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = readyz(app).await;
        if status == 200 && body["redis"]["note"].is_null() {
            return;
        }
        assert!(Instant::now() < deadline, "no epoch marker: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn queue_mails(app: &TestApp, label: &str, n: usize) -> Vec<(String, String)> {
    let mut queued = Vec::new();
    for i in 0..n {
        let to = format!("{label}-{i}@example.com");
        let id = app.queue_test_mail(&to).await;
        queued.push((id, to));
    }
    queued
}

/// Every job succeeds within `bound` of `since`, and each mail is delivered exactly once (also
/// a while later: no second delivery runs it again).
async fn all_run_once(app: &TestApp, queued: &[(String, String)], since: Instant, bound: Duration) {
    for (id, _) in queued {
        let left = bound.saturating_sub(since.elapsed());
        app.wait_for_job(id, "succeeded", left).await;
    }
    assert!(since.elapsed() <= bound, "took {:?}", since.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (id, to) in queued {
        assert_eq!(mails_to(app, to), 1, "job {id}: one mail to {to}");
    }
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT attempts FROM jobs WHERE id::text = ANY($1)")
            .bind(queued.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>())
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert!(
        attempts.iter().all(|a| *a == 1),
        "one attempt each: {attempts:?}"
    );
}

#[tokio::test]
async fn a_job_pushed_before_redis_was_flushed_still_runs() {
    let redis = TestRedis::start();
    let mut app = app_on(&redis, false).await;
    app.wait_until_ready().await;
    let to = "flushed@example.com";
    app.register(to, "student").await;
    let jobs = email_jobs(&app).await;
    assert!(
        !jobs.is_empty(),
        "registration queues the verification mail"
    );
    assert!(jobs.iter().all(|(_, dispatched)| *dispatched), "{jobs:?}");

    // The push is in Redis, in the layout apalis-redis's fetch script reads (Lectern writes it
    // itself: an apalis-redis upgrade that moves these keys must fail here).
    let mut conn = redis.conn();
    let active = format!("{}-email:active", app.prefix);
    let pending: Vec<String> = redis::cmd("LRANGE")
        .arg(&active)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(pending.len(), jobs.len());
    let body: String = redis::cmd("HGET")
        .arg(format!("{}-email:data", app.prefix))
        .arg(&pending[0])
        .query(&mut conn)
        .unwrap();
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(
        jobs.iter().any(|(id, _)| body["id"] == id.as_str()),
        "{body}"
    );
    let status: String = redis::cmd("HGET")
        .arg(format!("{}-email:meta:{}", app.prefix, pending[0]))
        .arg("status")
        .query(&mut conn)
        .unwrap();
    assert_eq!(status, "Pending");

    // The scenario: the worker is stopped, Redis loses everything, a worker starts.
    let _: () = redis::cmd("FLUSHDB").query(&mut conn).unwrap();
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
    let note = body["redis"]["note"].as_str().unwrap_or_default();
    assert!(note.contains("lost its data"), "readyz tells: {body}");

    let started = Instant::now();
    app.worker = Some(app.spawn_worker("worker.log"));
    for (id, _) in &jobs {
        app.wait_for_job(id, "succeeded", Duration::from_secs(10))
            .await;
    }
    assert!(started.elapsed() <= Duration::from_secs(10));
    app.smtp.wait_for(1, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mails_to(&app, to), 1, "the verification mail, once");
    assert!(app.worker_log().contains("new Redis epoch"));
    wait_for_epoch(&app).await;
}

#[tokio::test]
async fn jobs_redis_lost_are_pushed_again_and_run_once() {
    let mut redis = TestRedis::start();
    let mut app = app_on(&redis, true).await;
    app.wait_until_ready().await;
    wait_for_epoch(&app).await;

    // Lost without a new epoch (an eviction, a failover that kept the marker): only the sweep
    // can tell, from PostgreSQL, that Redis no longer holds them.
    app.terminate_worker(Duration::from_secs(15));
    let swept = queue_mails(&app, "swept", 5).await;
    assert!(email_jobs(&app).await.iter().all(|(_, d)| *d));
    let mut conn = redis.conn();
    let _: () = redis::cmd("DEL")
        .arg(format!("{}-email:active", app.prefix))
        .query(&mut conn)
        .unwrap();
    let started = Instant::now();
    app.worker = Some(app.spawn_worker("worker-2.log"));
    all_run_once(&app, &swept, started, Duration::from_secs(12)).await;
    let log = app.worker_log();
    assert!(
        log.contains("missing from Redis"),
        "the sweep pushed them:\n{log}"
    );
    assert!(!log.contains("new Redis epoch"), "{log}");

    // Redis restarts without persistence while jobs wait in it.
    app.terminate_worker(Duration::from_secs(15));
    let restarted = queue_mails(&app, "restarted", 5).await;
    redis.restart();
    let started = Instant::now();
    app.worker = Some(app.spawn_worker("worker-3.log"));
    all_run_once(&app, &restarted, started, Duration::from_secs(10)).await;
    assert!(app.worker_log().contains("new Redis epoch"));
    // The first batch stays done: nothing ran twice.
    for (_, to) in &swept {
        assert_eq!(mails_to(&app, to), 1);
    }
}

#[tokio::test]
async fn a_full_redis_delays_jobs_and_loses_none() {
    let redis = TestRedis::start();
    let app = app_on(&redis, true).await;
    app.wait_until_ready().await;
    wait_for_epoch(&app).await;

    // Full: with `noeviction`, every write is refused (used memory is above maxmemory).
    let mut conn = redis.conn();
    let filler = "x".repeat(64 * 1024);
    for i in 0..32 {
        let _: () = redis::cmd("SET")
            .arg(format!("filler-{i}"))
            .arg(&filler)
            .query(&mut conn)
            .unwrap();
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1024 * 1024)
        .query(&mut conn)
        .unwrap();
    let refused = redis::cmd("SET").arg("probe").arg(1).query::<()>(&mut conn);
    assert!(refused.is_err(), "Redis refuses writes now");

    // Enqueueing still commits (PostgreSQL holds the job); the push fails.
    let queued = queue_mails(&app, "full", 3).await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["redis"]["ok"], false);
    let error = body["redis"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("refuses writes"), "readyz tells: {body}");
    assert!(error.contains("OOM"), "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (id, to) in &queued {
        let (_, job) = app.get_as_admin(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(job["state"], "queued", "{job}");
        assert_eq!(mails_to(&app, to), 0);
    }

    // Room again: every job runs, once.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut conn)
        .unwrap();
    let started = Instant::now();
    all_run_once(&app, &queued, started, Duration::from_secs(20)).await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
}

/// PostgreSQL failing during a burst, simulated: the worker's statements time out after
/// 300 ms (`statement_timeout`) while the test holds `jobs` locked, so every claim fails for
/// longer than a delivery waits. The deliveries are dropped, not parked in apalis's scheduled
/// set, and the relay pushes the jobs again once the table is free: each runs once.
#[tokio::test]
async fn deliveries_whose_claim_fails_come_back_and_run_once() {
    let redis = TestRedis::start();
    let mut app = app_on(&redis, false).await;
    app.wait_until_ready().await;
    let queued = queue_mails(&app, "claim", 5).await;
    assert!(email_jobs(&app).await.iter().all(|(_, d)| *d));

    let mut lock = app.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut env = app.env.clone();
    env.insert(
        "DATABASE_URL".into(),
        format!("{}?options=-c%20statement_timeout%3D300", app.db.url),
    );
    app.worker = Some(lectern_tests::Proc::spawn(
        "lectern-worker",
        &[],
        &env,
        app.dir.join("worker.log"),
    ));
    // Longer than a delivery waits for its claim (5 s).
    tokio::time::sleep(Duration::from_secs(7)).await;
    lock.rollback().await.unwrap();

    let started = Instant::now();
    all_run_once(&app, &queued, started, Duration::from_secs(15)).await;
    let log = app.worker_log();
    assert!(
        log.contains("could not claim the job"),
        "claims failed:\n{log}"
    );
    assert!(log.contains("dropping this delivery"), "{log}");
    let mut conn = redis.conn();
    let parked: usize = redis::cmd("ZCARD")
        .arg(format!("{}-email:scheduled", app.prefix))
        .query(&mut conn)
        .unwrap();
    assert_eq!(parked, 0, "no delivery parked in apalis's scheduled set");
}

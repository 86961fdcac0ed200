//! Benchmarks that drive the real `lectern-api` binary over HTTP, with real PostgreSQL and Redis.
//! Run with `scripts/bench` (release build). Prints figures; asserts nothing.
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

    // Enqueue-to-start: mails queued through the API at a steady 50 per second; the latency is
    // the job row's started_at minus its created_at (commit, push, wake-up, claim).
    drop(app);
    let app = TestApp::spawn_with(Options {
        no_worker: false,
        env: vec![("RATE_LIMITS".into(), "off".into())],
    })
    .await;
    app.wait_until_ready().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = 50 * seconds as usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for i in 0..total {
        ticker.tick().await;
        let (status, _) = app
            .post_as_admin(
                "/api/v1/admin/email/test",
                &json!({ "to": format!("bench-{i}@example.com") }),
            )
            .await;
        assert_eq!(status, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.smtp.messages().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut waits: Vec<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM started_at - created_at)::float8 * 1000 FROM jobs WHERE started_at IS NOT NULL",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    waits.sort_by(f64::total_cmp);
    let at = |p: f64| waits[((waits.len() as f64 * p).ceil() as usize).clamp(1, waits.len()) - 1];
    println!(
        "{:<34} {:>9} jobs      p50 {:>7.2} ms   p99 {:>7.2} ms   (50 jobs/s through the API, 1 worker)",
        "enqueue-to-start (send_email)",
        waits.len(),
        at(0.50),
        at(0.99)
    );
    println!(
        "lectern-worker peak RSS: {}",
        peak_rss(app.worker.as_ref().unwrap().pid())
    );
}

/// The process's peak resident set size, as the kernel reports it.
fn peak_rss(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        })
        .unwrap_or_default()
}

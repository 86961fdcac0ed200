//! Learning benchmark: 200 simulated players sending watch heartbeats to the real `lectern-api`
//! (`PUT /api/v1/progress/videos/{id}`) as fast as it answers, then certificate rendering speed.
//! Run with `scripts/bench learning`.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use lectern_core::learning::certificates::{CertificateText, render_pdf};
use lectern_tests::fixtures::{mint_users, published_course_with_videos};
use lectern_tests::{Options, TestApp};
use serde_json::json;

/// Ten-hour videos: at these rates no player gets near 90 % within a run, so every heartbeat
/// but the first is the common one (completions take the full path, tested elsewhere).
const VIDEO_SECS: f64 = 36_000.0;

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let players: usize = std::env::var("BENCH_PLAYERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    // The API's pool: more connections than cores only adds contention on the few pages that
    // 200 players' rows live on.
    let connections: u32 = std::env::var("BENCH_DB_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![
            ("RATE_LIMITS".into(), "off".into()),
            ("DATABASE_MAX_CONNECTIONS".into(), connections.to_string()),
        ],
    })
    .await;
    let pool = &app.db.pool;
    let (teacher, _) = mint_users(pool, 1, "instructor").await.remove(0);
    let (course, videos) =
        published_course_with_videos(pool, teacher, "Bench", "0", 20, VIDEO_SECS).await;
    let students = mint_users(pool, players, "student").await;
    sqlx::query(
        "INSERT INTO enrollments (id, user_id, course_id)
         SELECT gen_random_uuid(), u, $1 FROM unnest($2::uuid[]) AS u",
    )
    .bind(course)
    .bind(students.iter().map(|s| s.0).collect::<Vec<_>>())
    .execute(pool)
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(players)
        .build()
        .unwrap();
    // One opening heartbeat per player, then their viewing started a day ago (as if they had
    // been watching), so that the bound on coverage since the first heartbeat lets a fast
    // benchmark through. Each heartbeat then adds 5 new seconds, which the bound per heartbeat
    // (2x the wall time since the previous one, plus 5 s of slack) always allows.
    for (i, (_, token)) in students.iter().enumerate() {
        let video = videos[i % videos.len()];
        let res = http
            .put(format!("{}/api/v1/progress/videos/{video}", app.url))
            .bearer_auth(token)
            .json(&json!({"last_position": 5.0, "watch_time": 5.0}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
    }
    sqlx::query("UPDATE video_progress SET first_watched_at = now() - interval '1 day'")
        .execute(pool)
        .await
        .unwrap();
    let rate: f64 = std::env::var("BENCH_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000.0);
    println!(
        "lectern learning benchmark: {players} players, {} cores, {seconds} s per figure, API and PostgreSQL on loopback",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let players: Arc<Vec<(String, uuid::Uuid)>> = Arc::new(
        students
            .iter()
            .enumerate()
            .map(|(i, (_, token))| (token.clone(), videos[i % videos.len()]))
            .collect(),
    );
    // Saturation: every player sends its next heartbeat as soon as the previous one is answered.
    let positions = vec![5.0; players.len()];
    let run = play(&http, &app.url, &players, positions, seconds, None).await;
    run.print("as fast as answered");
    // At the target rate: each player sends on its own schedule (rate / players per second), and
    // latency counts from when a heartbeat was due, so a slow answer that delays the next ones
    // is charged to them too.
    let run = play(
        &http,
        &app.url,
        &players,
        run.positions,
        seconds,
        Some(rate),
    )
    .await;
    run.print(&format!("offered {rate:.0}/s"));
    // Heartbeats update the same rows over and over: each update that is not HOT (heap-only)
    // also writes a new entry in every index of the table.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (updates, hot): (i64, i64) = sqlx::query_as(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'video_progress'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    println!(
        "video_progress updates that were HOT: {hot} of {updates} ({:.0} %)",
        100.0 * hot as f64 / updates.max(1) as f64
    );

    // Certificates: render in process, as the job does.
    let text = CertificateText {
        student_name: "Łukasz Żółć".into(),
        course_title: "Sailing Basics: From Knots to Navigation".into(),
        instructor_name: "Ngô Bảo Châu".into(),
        completed_on: "November 25, 2026".into(),
        verification_code: "ABCD-EFGH-JKLM".into(),
        verify_url:
            "https://lectern.example/api/v1/certificates/01a213a7-6e03-74cb-9643-2db586cc92bf"
                .into(),
    };
    let first = render_pdf(&text).unwrap();
    let n = 200;
    let started = Instant::now();
    for _ in 0..n {
        render_pdf(&text).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "certificate PDF render                 {:>8.0} certificates/s per core   {:.1} ms each   {} bytes",
        n as f64 / elapsed,
        elapsed * 1000.0 / n as f64,
        first.len()
    );
}

struct Run {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: f64,
    positions: Vec<f64>,
}

impl Run {
    fn print(&self, what: &str) {
        let lat = &self.latencies;
        let pct = |p: f64| {
            lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1].as_secs_f64()
                * 1000.0
        };
        println!(
            "PUT /progress/videos/{{id}}, {what:<20} {:>7.0} heartbeats/s   p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>7.2} ms   ({} requests, {} errors)",
            lat.len() as f64 / self.elapsed,
            pct(0.50),
            pct(0.99),
            pct(1.0),
            lat.len(),
            self.errors
        );
    }
}

/// Every player watches on from `positions` in 5-second heartbeats for `seconds`: back to back,
/// or paced so that all players together offer `rate` heartbeats per second.
async fn play(
    http: &reqwest::Client,
    base: &str,
    players: &Arc<Vec<(String, uuid::Uuid)>>,
    positions: Vec<f64>,
    seconds: u64,
    rate: Option<f64>,
) -> Run {
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let period = rate.map(|r| Duration::from_secs_f64(players.len() as f64 / r));
    let mut tasks = Vec::new();
    for (i, mut position) in positions.into_iter().enumerate() {
        let (http, base, players) = (http.clone(), base.to_owned(), players.clone());
        // Paced players start spread over one period.
        let mut next = period.map(|p| started + p.mul_f64(i as f64 / players.len() as f64));
        tasks.push(tokio::spawn(async move {
            let (token, video) = &players[i];
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            while next.unwrap_or_else(Instant::now) < end {
                let due = match (next.as_mut(), period) {
                    (Some(next), Some(period)) => {
                        tokio::time::sleep_until((*next).into()).await;
                        let due = *next;
                        *next += period;
                        due
                    }
                    _ => Instant::now(),
                };
                position = if position >= VIDEO_SECS - 5.0 {
                    5.0
                } else {
                    position + 5.0
                };
                let ok = http
                    .put(format!("{base}/api/v1/progress/videos/{video}"))
                    .bearer_auth(token)
                    .json(&json!({"last_position": position, "watch_time": 5.0}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                lat.push(due.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (lat, errors, position)
        }));
    }
    let (mut latencies, mut errors, mut positions) = (Vec::new(), 0, Vec::new());
    for t in tasks {
        let (l, e, p) = t.await.unwrap();
        latencies.extend(l);
        errors += e;
        positions.push(p);
    }
    latencies.sort();
    Run {
        latencies,
        errors,
        elapsed: started.elapsed().as_secs_f64(),
        positions,
    }
}

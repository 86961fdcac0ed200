//! Analytics and real-time benchmark. Seeds, with set-based SQL, one instructor with 1,000
//! courses (20 videos each), 100,000 students, 1,000,000 enrollments and 10,000,000 video
//! progress rows, then drives the real `lectern-api` over HTTP: p50/p99 of the instructor
//! overview and of one course's analytics. Then opens 10,000 idle WebSockets to the same API
//! process and reads its resident memory before and after, for connections per GiB.
//! Run with `scripts/bench analytics`. Scale down with BENCH_COURSES, BENCH_ENROLLMENTS,
//! BENCH_PROGRESS and BENCH_SOCKETS; BENCH_SECONDS is the duration of each timed figure.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use lectern_tests::fixtures::mint_users;
use lectern_tests::{Options, TestApp};
use sqlx::PgConnection;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

fn env(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

async fn exec(conn: &mut PgConnection, what: &str, sql: String) {
    let started = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("seeding {what}: {e}"));
    println!(
        "  seeded {what:<44} {:>6.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Index definitions of a table that do not back a constraint, and its primary key, so that a
/// bulk load can drop them and build them afterwards (sorting once instead of 10M random inserts).
async fn droppable_indexes(conn: &mut PgConnection, table: &str) -> (Vec<String>, Vec<String>) {
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i
          WHERE i.tablename = $1 AND NOT EXISTS (
                SELECT 1 FROM pg_constraint c WHERE c.conindid = (quote_ident(i.indexname))::regclass)",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let (drop, create) = indexes
        .into_iter()
        .map(|(name, def)| (format!("DROP INDEX {name};"), format!("{def};")))
        .unzip();
    (drop, create)
}

async fn timed(
    http: &reqwest::Client,
    token: &str,
    urls: &[String],
    seconds: u64,
) -> (Vec<Duration>, serde_json::Value) {
    let mut last = serde_json::Value::Null;
    for url in urls.iter().cycle().take(20) {
        let res = http.get(url).bearer_auth(token).send().await.unwrap();
        assert!(res.status().is_success(), "{url}: {}", res.status());
        last = res.json().await.unwrap();
    }
    let mut lat = Vec::new();
    let started = Instant::now();
    for url in urls.iter().cycle() {
        if started.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
        let t = Instant::now();
        let res = http.get(url).bearer_auth(token).send().await.unwrap();
        assert!(res.status().is_success(), "{url}: {}", res.status());
        res.bytes().await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    (lat, last)
}

fn report(name: &str, lat: &[Duration]) {
    println!(
        "{name:<44} p50 {:>7.2} ms   p99 {:>7.2} ms   ({} sequential requests)",
        percentile(lat, 0.50),
        percentile(lat, 0.99),
        lat.len()
    );
}

#[tokio::main]
async fn main() {
    let courses = env("BENCH_COURSES", 1_000).max(1);
    let enrollments = env("BENCH_ENROLLMENTS", 1_000_000).max(1);
    let progress = env("BENCH_PROGRESS", 10_000_000).max(0);
    let seconds = env("BENCH_SECONDS", 10).max(1) as u64;
    let sockets = env("BENCH_SOCKETS", 10_000).max(0) as usize;
    // Each student takes up to ten courses (consecutive ones from a starting point, so never
    // the same twice); each enrollment watched `per_enrollment` of its course's videos.
    let students = (enrollments / 10)
        .max((enrollments + courses - 1) / courses)
        .max(1);
    let per_enrollment = (progress / enrollments).max(0);
    let videos = per_enrollment.max(20);

    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![
            ("RATE_LIMITS".into(), "off".into()),
            ("DATABASE_MAX_CONNECTIONS".into(), "20".into()),
        ],
    })
    .await;
    let pool = &app.db.pool;
    let (teacher, token) = mint_users(pool, 1, "instructor").await.remove(0);
    println!(
        "lectern analytics benchmark: {courses} courses of one instructor, {enrollments} enrollments of {students} students, \
         {} progress rows; {} cores; API, PostgreSQL on loopback",
        enrollments * per_enrollment,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let seeding = Instant::now();
    let mut conn = pool.acquire().await.unwrap();
    // Bulk load: no per-row triggers or foreign-key checks (the rows are consistent by
    // construction), the secondary indexes built once at the end.
    exec(
        &mut conn,
        "settings",
        "SET maintenance_work_mem = '512MB'; SET session_replication_role = replica;".into(),
    )
    .await;
    exec(
        &mut conn,
        &format!("{students} students, {courses} courses, videos"),
        format!(
            "INSERT INTO users (id, email, password_hash, full_name, role, email_verified_at, created_at)
             SELECT md5('u' || g)::uuid, 'bench-student-' || g || '@example.com', 'not-a-hash', 'Student ' || g,
                    'student', now(), now() - interval '400 days'
               FROM generate_series(0, {students} - 1) g;
             INSERT INTO courses (id, instructor_id, title, slug, price, currency, status, published_at, created_at)
             SELECT md5('c' || g)::uuid, '{teacher}', 'Bench course ' || g, 'bench-course-' || g,
                    CASE WHEN g % 5 = 0 THEN 0 ELSE 9.99 + g % 50 END, CASE WHEN g % 3 = 0 THEN 'EUR' ELSE 'USD' END,
                    CASE WHEN g % 10 = 9 THEN 'draft' ELSE 'published' END, now() - interval '400 days',
                    now() - (g || ' minutes')::interval
               FROM generate_series(0, {courses} - 1) g;
             INSERT INTO sections (id, course_id, title, position)
             SELECT md5('s' || g)::uuid, md5('c' || g)::uuid, 'Lessons', 1 FROM generate_series(0, {courses} - 1) g;
             INSERT INTO media (id, owner_id, course_id, section_id, kind, state, title, duration_secs)
             SELECT md5('m' || c || '-' || v)::uuid, '{teacher}', md5('c' || c)::uuid, md5('s' || c)::uuid,
                    'video', 'ready', 'Lesson ' || (v + 1), 600
               FROM generate_series(0, {courses} - 1) c, generate_series(0, {videos} - 1) v;
             CREATE TABLE bench_enroll AS
             SELECT e, e % {students} AS s, ((e % {students}) * 7 + e / {students}) % {courses} AS c
               FROM generate_series(0::bigint, {enrollments} - 1) e;"
        ),
    )
    .await;
    let (drop_e, create_e) = droppable_indexes(&mut conn, "enrollments").await;
    let (drop_p, create_p) = droppable_indexes(&mut conn, "video_progress").await;
    exec(
        &mut conn,
        &format!("{enrollments} enrollments (and their totals)"),
        format!(
            "{}
             INSERT INTO enrollments (id, user_id, course_id, status, price_paid, currency, progress, enrolled_at, completed_at)
             SELECT md5('e' || b.e)::uuid, md5('u' || b.s)::uuid, md5('c' || b.c)::uuid,
                    CASE WHEN b.e % 10 = 0 THEN 'completed' WHEN b.e % 17 = 0 THEN 'dropped' ELSE 'active' END,
                    CASE WHEN b.c % 5 = 0 THEN 0 ELSE 9.99 + b.c % 50 END, CASE WHEN b.c % 3 = 0 THEN 'EUR' ELSE 'USD' END,
                    CASE WHEN b.e % 10 = 0 THEN 100 ELSE (b.e * 37) % 100 END,
                    now() - ((b.e * 7919) % 525600 || ' minutes')::interval,
                    CASE WHEN b.e % 10 = 0 THEN now() - ((b.e * 7919) % 1440 || ' minutes')::interval END
               FROM bench_enroll b;
             INSERT INTO enrollment_totals (course_id, currency, enrolled, completed, revenue)
             SELECT course_id, currency, count(*) FILTER (WHERE status IN ('active', 'completed')),
                    count(*) FILTER (WHERE status = 'completed'), sum(price_paid)
               FROM enrollments GROUP BY course_id, currency;
             INSERT INTO reviews (id, course_id, user_id, rating, created_at)
             SELECT md5('r' || b.e)::uuid, md5('c' || b.c)::uuid, md5('u' || b.s)::uuid, 1 + (b.e / 19) % 5,
                    now() - interval '10 days'
               FROM bench_enroll b WHERE b.e % 19 = 0;
             UPDATE courses c SET enrollment_count = x.enrolled, completion_count = x.completed
               FROM (SELECT course_id, sum(enrolled) AS enrolled, sum(completed) AS completed
                       FROM enrollment_totals GROUP BY course_id) x WHERE x.course_id = c.id;
             UPDATE courses c SET rating_count = x.n, rating_average = x.average
               FROM (SELECT course_id, count(*) AS n, round(avg(rating), 2) AS average FROM reviews GROUP BY course_id) x
              WHERE x.course_id = c.id;",
            drop_e.join("\n")
        ),
    )
    .await;
    exec(
        &mut conn,
        &format!("{} progress rows", enrollments * per_enrollment),
        format!(
            "ALTER TABLE video_progress DROP CONSTRAINT video_progress_pkey;
             {}
             INSERT INTO video_progress (user_id, media_id, enrollment_id, covered, last_position, watch_time,
                                         completed_at, first_watched_at, last_heartbeat_at)
             SELECT md5('u' || b.s)::uuid, md5('m' || b.c || '-' || ((b.e + j) % {videos}))::uuid, md5('e' || b.e)::uuid,
                    int4multirange(int4range(0, x.w)), x.w, x.w, CASE WHEN x.w >= 540 THEN now() END,
                    now() - interval '30 days', now()
               FROM bench_enroll b, generate_series(0, {per_enrollment} - 1) j,
                    LATERAL (SELECT ((b.e * 13 + j * 151) % 601)::int AS w) x;",
            drop_p.join("\n")
        ),
    )
    .await;
    exec(
        &mut conn,
        "indexes",
        format!(
            "ALTER TABLE video_progress ADD PRIMARY KEY (user_id, media_id);
             {}
             {}
             DROP TABLE bench_enroll;
             SET session_replication_role = origin;",
            create_e.join("\n"),
            create_p.join("\n")
        ),
    )
    .await;
    exec(&mut conn, "VACUUM ANALYZE", "VACUUM ANALYZE".into()).await;
    drop(conn);
    println!("  seeding took {:.0} s", seeding.elapsed().as_secs_f64());

    // Dashboards, one request at a time, as an instructor opening them.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let overview = format!("{}/api/v1/instructor/overview", app.url);
    let (lat, body) = timed(&http, &token, std::slice::from_ref(&overview), seconds).await;
    let expected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM enrollments WHERE status IN ('active', 'completed')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(body["courses_total"], courses, "{}", body["courses_total"]);
    assert_eq!(body["enrollments_total"], expected);
    report("GET /instructor/overview (30 days)", &lat);
    let year = format!("{overview}?from={}", {
        let today = chrono::Utc::now().date_naive();
        today - chrono::Duration::days(364)
    });
    let (lat, _) = timed(&http, &token, std::slice::from_ref(&year), seconds.min(5)).await;
    report("GET /instructor/overview (365 days)", &lat);

    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM courses ORDER BY random() LIMIT 200")
        .fetch_all(pool)
        .await
        .unwrap();
    let urls: Vec<String> = ids
        .iter()
        .map(|id| format!("{}/api/v1/instructor/courses/{id}/analytics", app.url))
        .collect();
    let (lat, body) = timed(&http, &token, &urls, seconds).await;
    assert!(body["top_videos"].as_array().is_some_and(|v| !v.is_empty()) || per_enrollment == 0);
    report(
        &format!(
            "GET /instructor/courses/{{id}}/analytics ({} courses)",
            ids.len()
        ),
        &lat,
    );

    // Idle WebSockets on one API process: memory before and after.
    if sockets > 0 {
        let per_user = 4;
        let users = mint_users(pool, sockets.div_ceil(per_user), "student").await;
        let pid = app.api.pid();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss_bytes(pid);
        let base = app.url.replace("http://", "ws://");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        let tokens: Vec<Arc<String>> = users
            .iter()
            .flat_map(|(_, t)| std::iter::repeat_n(Arc::new(t.clone()), per_user))
            .take(sockets)
            .collect();
        let opened: Vec<_> = stream::iter(tokens)
            .map(|token| {
                let url = format!("{base}/api/v1/ws?token={token}");
                let mut stop = stop_rx.clone();
                async move {
                    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) if t.contains("\"ready\"") => break,
                            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                            _ => return None,
                        }
                    }
                    // Hold it open, answering the server's pings, until the end.
                    Some(tokio::spawn(async move {
                        loop {
                            tokio::select! {
                                _ = stop.changed() => break,
                                msg = ws.next() => if !matches!(msg, Some(Ok(_))) { return false },
                            }
                        }
                        let _ = ws.close(None).await;
                        true
                    }))
                }
            })
            .buffer_unordered(64)
            .filter_map(|x| async move { x })
            .collect()
            .await;
        let open_secs = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = rss_bytes(pid);
        let held = opened.iter().filter(|h| !h.is_finished()).count();
        let per_socket = after.saturating_sub(before) as f64 / held.max(1) as f64;
        println!(
            "idle WebSockets: {held} of {sockets} open in {open_secs:.1} s; API RSS {:.1} MiB -> {:.1} MiB, \
             {:.1} KiB each: {:.0} connections per GiB",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            per_socket / 1024.0,
            if per_socket > 0.0 {
                (1u64 << 30) as f64 / per_socket
            } else {
                f64::INFINITY
            }
        );
        let _ = stop_tx.send(true);
        for h in opened {
            let _ = h.await;
        }
    }
}

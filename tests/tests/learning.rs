//! Learning, end to end: watch progress from heartbeats, completion exactly once, certificates
//! (PDF parsed back), and course counters that match the tables after a burst.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lectern_tests::TestApp;
use lectern_tests::fixtures::{mint_users, published_course_with_videos};
use serde_json::{Value, json};
use uuid::Uuid;

async fn beat(
    app: &TestApp,
    token: &str,
    video: Uuid,
    position: f64,
    watched: f64,
) -> (u16, Value) {
    app.call(
        "PUT",
        &format!("/api/v1/progress/videos/{video}"),
        Some(token),
        Some(&json!({"last_position": position, "watch_time": watched, "completed": true})),
    )
    .await
}

/// `POST /courses/{course}/{op}` as a student: `enroll` or `drop`.
async fn course_op(app: &TestApp, token: &str, course: Uuid, op: &str) -> (u16, Value) {
    app.call(
        "POST",
        &format!("/api/v1/courses/{course}/{op}"),
        Some(token),
        None,
    )
    .await
}

/// Moves a student's viewing `secs` into the past, as if that much wall time had gone by since
/// their first and last heartbeats (the server bounds coverage by the wall time in between).
async fn let_time_pass(pool: &sqlx::PgPool, user: Uuid, secs: f64) {
    sqlx::query(
        "UPDATE video_progress SET first_watched_at = first_watched_at - make_interval(secs => $2),
                                   last_heartbeat_at = last_heartbeat_at - make_interval(secs => $2)
          WHERE user_id = $1",
    )
    .bind(user)
    .bind(secs)
    .execute(pool)
    .await
    .unwrap();
}

async fn eventually<F, Fut, T>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn seeking_does_not_complete_a_video_but_watching_ninety_percent_does() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let (teacher, _) = mint_users(pool, 1, "instructor").await.remove(0);
    let (course, videos) = published_course_with_videos(pool, teacher, "Knots", "0", 2, 20.0).await;
    let users = mint_users(pool, 2, "student").await;
    let (s_id, s, outsider) = (users[0].0, &users[0].1, &users[1].1);

    // Not enrolled: the video is not theirs to watch.
    assert_eq!(beat(&app, s, videos[0], 5.0, 5.0).await.0, 404);
    assert_eq!(course_op(&app, s, course, "enroll").await.0, 201);
    assert_eq!(beat(&app, outsider, videos[0], 5.0, 5.0).await.0, 404);
    assert_eq!(beat(&app, s, Uuid::now_v7(), 5.0, 5.0).await.0, 404);

    // Seek to the end and watch two seconds there: the client says "completed", the server does not.
    let (status, p) = beat(&app, s, videos[0], 20.0, 2.0).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["watched_secs"], 2);
    assert_eq!(p["completed"], false);
    assert_eq!(p["course_progress"], 0.0);

    // Bad input: nothing recorded.
    for (position, watched, field) in [
        (-1.0, 1.0, "last_position"),
        (25.0, 1.0, "last_position"),
        (10.0, -2.0, "watch_time"),
        (10.0, 31.0, "watch_time"),
        (3.0, 10.0, "watch_time"),
    ] {
        let (status, body) = beat(&app, s, videos[0], position, watched).await;
        assert_eq!(status, 422, "{position} {watched}: {body}");
        assert!(body["error"]["fields"][field].is_array(), "{body}");
    }
    let (status, body) = app
        .call(
            "PUT",
            &format!("/api/v1/progress/videos/{}", videos[0]),
            Some(s),
            Some(&json!({"last_position": "x"})),
        )
        .await;
    assert!(status == 400 || status == 422, "{status} {body}");

    // Watch from the start in heartbeats: 0..15 plus the 18..20 seen after the seek is 17 s, not
    // yet 90 % of 20; then 15..18 makes 20 s covered.
    for (end, watched) in [(6.0, 6.0), (12.0, 6.0), (15.0, 3.0)] {
        let_time_pass(pool, s_id, watched).await;
        let (status, p) = beat(&app, s, videos[0], end, watched).await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["completed"], false, "{p}");
    }
    let_time_pass(pool, s_id, 3.0).await;
    let (_, p) = beat(&app, s, videos[0], 18.0, 3.0).await;
    assert_eq!(
        p["watched_secs"], 20,
        "0..18 plus the 18..20 seen after the seek: {p}"
    );
    assert_eq!(p["completed"], true);
    assert_eq!(p["course_progress"], 50.0);
    assert_eq!(p["course_completed"], false);

    assert_eq!(beat(&app, s, videos[1], 10.0, 10.0).await.0, 200);
    let (_, progress) = app
        .call(
            "GET",
            &format!("/api/v1/courses/{course}/progress"),
            Some(s),
            None,
        )
        .await;
    assert_eq!(progress["enrollment"]["progress"], 50.0, "{progress}");
    assert_eq!(progress["videos"].as_array().unwrap().len(), 2);
    assert_eq!(progress["videos"][1]["watched_secs"], 10);
    // Covering faster than real time allows is refused: playback of this long video has just
    // started, and 60 s covered at once is more than any player could have shown.
    let others = mint_users(pool, 1, "student").await;
    let t = &others[0].1;
    let (course2, long) = published_course_with_videos(pool, teacher, "Long", "0", 1, 600.0).await;
    course_op(&app, t, course2, "enroll").await;
    assert_eq!(beat(&app, t, long[0], 30.0, 30.0).await.0, 200);
    let (status, body) = beat(&app, t, long[0], 60.0, 30.0).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        beat(&app, t, long[0], 30.0, 30.0).await.0,
        200,
        "a replayed heartbeat adds nothing and passes"
    );
}

#[tokio::test]
async fn concurrent_heartbeats_complete_once_and_issue_one_certificate() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let teacher = app.register("teacher@example.com", "instructor").await;
    let teacher_id: Uuid = teacher["user"]["id"].as_str().unwrap().parse().unwrap();
    let (course, videos) =
        published_course_with_videos(pool, teacher_id, "Sailing Basics", "0", 1, 20.0).await;
    let student = app.register("lukasz@example.com", "student").await;
    let s = student["access_token"].as_str().unwrap().to_owned();
    let s_id: Uuid = student["user"]["id"].as_str().unwrap().parse().unwrap();
    let (status, _) = app
        .call(
            "PATCH",
            "/api/v1/me",
            Some(&s),
            Some(&json!({"full_name": "Łukasz Żółć"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(course_op(&app, &s, course, "enroll").await.0, 201);
    assert_eq!(beat(&app, &s, videos[0], 10.0, 10.0).await.0, 200);
    let_time_pass(pool, s_id, 10.0).await;

    // 50 heartbeats at once, each finishing the video; every answer says the course is complete,
    // including those that waited for the one that completed it.
    let beats = (0..50).map(|_| beat(&app, &s, videos[0], 20.0, 10.0));
    let results = futures::future::join_all(beats).await;
    assert!(
        results.iter().all(|(status, _)| *status == 200),
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .all(|(_, p)| p["course_completed"] == true && p["course_progress"] == 100.0),
        "{results:?}"
    );
    let (completed, certificate_jobs, certificates): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM enrollments WHERE status = 'completed'),
                (SELECT count(*) FROM jobs WHERE kind = 'issue_certificate'),
                (SELECT count(*) FROM certificates)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((completed, certificate_jobs), (1, 1));
    assert!(certificates <= 1);

    // The certificate: verifiable publicly, with a PDF that carries the name.
    let id: Uuid = eventually("certificate issued", Duration::from_secs(30), || async {
        sqlx::query_scalar("SELECT id FROM certificates WHERE issued_at IS NOT NULL")
            .fetch_optional(pool)
            .await
            .unwrap()
    })
    .await;
    let (status, cert) = app.get(&format!("/api/v1/certificates/{id}")).await;
    assert_eq!(status, 200, "{cert}");
    assert_eq!(cert["student_name"], "Łukasz Żółć");
    assert_eq!(cert["course_title"], "Sailing Basics");
    let code = cert["verification_code"].as_str().unwrap().to_owned();
    let (status, by_code) = app
        .get(&format!("/api/v1/certificates/{}", code.to_lowercase()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(by_code["id"], id.to_string());
    let text = pdf_text(&app, &cert).await;
    assert!(text.contains("Łukasz Żółć"), "{text}");
    assert!(text.contains("Sailing Basics"), "{text}");
    assert!(text.contains(&code), "{text}");
    // The verification page is the frontend's (FRONTEND_URL, here PUBLIC_URL); it shows what
    // the public API answers for the id at the end of the link.
    let verify = cert["verify_url"].as_str().unwrap();
    assert_eq!(verify, format!("{}/certificates/{id}", app.url));
    assert!(text.contains(verify), "{text}");
    assert_eq!(
        app.get(&format!("/api/v1/certificates/{}", Uuid::now_v7()))
            .await
            .0,
        404
    );
    let mails = app.smtp.wait_for(4, Duration::from_secs(20));
    let cert_mail = mails
        .iter()
        .find(|m| m.parsed().subject.contains("certificate"))
        .expect("certificate mail");
    assert!(cert_mail.parsed().text.contains(&code));

    // A new name, a re-issue: the same certificate, the new name, no second mail.
    app.call(
        "PATCH",
        "/api/v1/me",
        Some(&s),
        Some(&json!({"full_name": "Lukas Zolc"})),
    )
    .await;
    let outsider = app.register("other@example.com", "student").await;
    let o = outsider["access_token"].as_str().unwrap();
    assert_eq!(
        app.call(
            "POST",
            &format!("/api/v1/certificates/{id}/reissue"),
            Some(o),
            None
        )
        .await
        .0,
        404
    );
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/certificates/{id}/reissue"),
            Some(&s),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    app.wait_for_job(
        body["job"]["id"].as_str().unwrap(),
        "succeeded",
        Duration::from_secs(30),
    )
    .await;
    let (_, again) = app.get(&format!("/api/v1/certificates/{id}")).await;
    assert_eq!(again["student_name"], "Lukas Zolc");
    assert_eq!(again["verification_code"], code.as_str());
    assert!(pdf_text(&app, &again).await.contains("Lukas Zolc"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let certificate_mails = app
        .smtp
        .messages()
        .iter()
        .filter(|m| m.parsed().subject.contains("certificate"))
        .count();
    assert_eq!(certificate_mails, 1);
}

/// Downloads the certificate's PDF through its signed link and extracts its text with poppler.
async fn pdf_text(app: &TestApp, cert: &Value) -> String {
    let url = cert["pdf_url"].as_str().expect("pdf_url");
    let bytes = app
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(bytes.starts_with(b"%PDF-"), "not a PDF");
    let path = app.dir.join(format!("{}.pdf", Uuid::now_v7()));
    std::fs::write(&path, &bytes).unwrap();
    let out = std::process::Command::new("pdftotext")
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils, installed by scripts/bootstrap.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn counters_match_the_tables_after_a_burst_of_enrollments_and_drops() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let (teacher, _) = mint_users(pool, 1, "instructor").await.remove(0);
    let (course, _) = published_course_with_videos(pool, teacher, "Popular", "0", 1, 60.0).await;
    let students = mint_users(pool, 250, "student").await;
    // 1,000 operations: every student enrolls; some drop; some come back; some drop twice.
    let ops: Vec<(String, &'static str)> = students
        .iter()
        .enumerate()
        .flat_map(|(i, (_, token))| {
            let seq: &[&'static str] = match i % 4 {
                0 => &["enroll", "enroll", "enroll", "enroll"],
                1 => &["enroll", "drop", "enroll", "enroll"],
                2 => &["enroll", "drop", "drop", "drop"],
                _ => &["enroll", "drop", "enroll", "drop"],
            };
            seq.iter()
                .map(move |op| (token.clone(), *op))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(ops.len(), 1000);
    let mut by_student: Vec<Vec<(String, &str)>> = vec![Vec::new(); students.len()];
    for (i, op) in ops.into_iter().enumerate() {
        by_student[i / 4].push(op);
    }
    // Students run in parallel (32 at a time); each one's operations in order.
    let runs = by_student.into_iter().map(|seq| {
        let app = &app;
        async move {
            for (token, op) in seq {
                let (status, body) = app
                    .call(
                        "POST",
                        &format!("/api/v1/courses/{course}/{op}"),
                        Some(&token),
                        None,
                    )
                    .await;
                assert!(status == 200 || status == 201, "{op}: {status} {body}");
            }
        }
    });
    futures::stream::iter(runs)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let truth: i64 = sqlx::query_scalar("SELECT count(*) FROM enrollments WHERE course_id = $1 AND status IN ('active', 'completed')")
        .bind(course)
        .fetch_one(pool)
        .await
        .unwrap();
    let expected = (0..students.len()).filter(|i| i % 4 < 2).count() as i64;
    assert_eq!(truth, expected, "the first two groups end enrolled");
    eventually("counters to converge", Duration::from_secs(30), || async {
        let (_, c) = app.get(&format!("/api/v1/courses/{course}")).await;
        (c["enrollment_count"].as_i64() == Some(truth)).then_some(())
    })
    .await;
    // Coalescing kept the recompute runs few.
    let runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'recompute_course_stats'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(runs < 100, "{runs} recompute jobs for 1,000 triggers");
}

use futures::StreamExt;

#[tokio::test]
async fn the_nightly_recompute_repairs_drifted_counters_once() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let (teacher, _) = mint_users(pool, 1, "instructor").await.remove(0);
    let (course, _) = published_course_with_videos(pool, teacher, "Drifting", "0", 1, 60.0).await;
    let students = mint_users(pool, 3, "student").await;
    for (_, token) in &students {
        course_op(&app, token, course, "enroll").await;
    }
    eventually("counters", Duration::from_secs(20), || async {
        let (_, c) = app.get(&format!("/api/v1/courses/{course}")).await;
        (c["enrollment_count"] == 3).then_some(())
    })
    .await;
    // Drift, as a bug or a manual edit would cause, then the night comes.
    sqlx::query("UPDATE courses SET enrollment_count = 999, rating_count = 7 WHERE id = $1")
        .bind(course)
        .execute(pool)
        .await
        .unwrap();
    let second_worker = app.spawn_worker("worker-2.log");
    sqlx::query(
        "UPDATE schedules SET next_run_at = now() - interval '1 minute'
          WHERE name = 'recompute_all_course_stats'",
    )
    .execute(pool)
    .await
    .unwrap();
    eventually("the nightly repair", Duration::from_secs(30), || async {
        let (_, c) = app.get(&format!("/api/v1/courses/{course}")).await;
        (c["enrollment_count"] == 3 && c["rating_count"] == 0).then_some(())
    })
    .await;
    // Two workers, one run; the next one is tomorrow at 03:00 UTC.
    let runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'recompute_all_course_stats'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(runs, 1);
    let next_is_tomorrow: bool = sqlx::query_scalar(
        "SELECT next_run_at > now() AND next_run_at <= now() + interval '27 hours' FROM schedules
          WHERE name = 'recompute_all_course_stats'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(next_is_tomorrow);
    drop(second_worker);
}

#[tokio::test]
async fn a_heartbeat_cannot_cover_more_than_the_wall_time_since_the_previous_one() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let (teacher, _) = mint_users(pool, 1, "instructor").await.remove(0);
    let (course, videos) =
        published_course_with_videos(pool, teacher, "Pauses", "0", 1, 600.0).await;
    let (s_id, s) = mint_users(pool, 1, "student").await.remove(0);
    course_op(&app, &s, course, "enroll").await;
    assert_eq!(beat(&app, &s, videos[0], 10.0, 10.0).await.0, 200);
    // Playback started an hour ago (so the bound since the first heartbeat allows plenty), but
    // the previous heartbeat was just now: 25 new seconds cannot have been watched since.
    sqlx::query("UPDATE video_progress SET first_watched_at = now() - interval '1 hour'")
        .execute(pool)
        .await
        .unwrap();
    let stored = || async {
        sqlx::query_as::<_, (i32, f64, f64, chrono::DateTime<chrono::Utc>)>(
            "SELECT covered_secs(covered), last_position, watch_time, last_heartbeat_at
               FROM video_progress WHERE user_id = $1",
        )
        .bind(s_id)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let before = stored().await;
    assert_eq!((before.0, before.1, before.2), (10, 10.0, 10.0));
    let (status, body) = beat(&app, &s, videos[0], 35.0, 25.0).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["fields"]["watch_time"].is_array(), "{body}");
    assert_eq!(stored().await, before, "nothing recorded");

    // 15 s later, the same heartbeat is plausible (at most 2x speed, plus a little slack).
    sqlx::query(
        "UPDATE video_progress SET last_heartbeat_at = last_heartbeat_at - interval '15 seconds'",
    )
    .execute(pool)
    .await
    .unwrap();
    let (status, p) = beat(&app, &s, videos[0], 35.0, 25.0).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["watched_secs"], 35);

    // A paused viewer banks nothing: two seconds after the last heartbeat, 25 more are refused
    // although the viewing started an hour ago; a heartbeat adding nothing new still passes.
    sqlx::query(
        "UPDATE video_progress SET last_heartbeat_at = last_heartbeat_at - interval '2 seconds'",
    )
    .execute(pool)
    .await
    .unwrap();
    let (status, body) = beat(&app, &s, videos[0], 60.0, 25.0).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["fields"]["watch_time"].is_array(), "{body}");
    let (status, p) = beat(&app, &s, videos[0], 30.0, 20.0).await;
    assert_eq!(status, 200, "rewatching adds no coverage: {p}");
    assert_eq!(p["watched_secs"], 35);
}

/// Moves a course's video into a second section of its own, returning that section.
async fn into_own_section(pool: &sqlx::PgPool, course: Uuid, video: Uuid) -> Uuid {
    let section = Uuid::now_v7();
    sqlx::query("INSERT INTO sections (id, course_id, title, position) VALUES ($1, $2, 'More', 2)")
        .bind(section)
        .bind(course)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE media SET section_id = $2 WHERE id = $1")
        .bind(video)
        .bind(section)
        .execute(pool)
        .await
        .unwrap();
    section
}

#[tokio::test]
async fn removing_the_only_unwatched_video_completes_the_course_once_with_a_certificate() {
    let app = TestApp::spawn().await;
    let app = &app;
    let pool = &app.db.pool;
    let (teacher, t) = mint_users(pool, 1, "instructor").await.remove(0);
    // Two courses of two videos; the student completes the first video of each. In one the
    // instructor deletes the section of the other video, in the other the video itself.
    let (by_section, v1) =
        published_course_with_videos(pool, teacher, "Rigging", "0", 2, 20.0).await;
    let (by_media, v2) =
        published_course_with_videos(pool, teacher, "Anchoring", "0", 2, 20.0).await;
    let section = into_own_section(pool, by_section, v1[1]).await;
    let (s_id, s) = mint_users(pool, 1, "student").await.remove(0);
    for (course, video) in [(by_section, v1[0]), (by_media, v2[0])] {
        let (status, body) = app
            .call(
                "POST",
                &format!("/api/v1/courses/{course}/enroll"),
                Some(&s),
                None,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, p) = beat(app, &s, video, 18.0, 18.0).await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["completed"], true, "{p}");
        assert_eq!(p["course_progress"], 50.0);
        assert_eq!(p["course_completed"], false);
    }
    let state = |course: Uuid| async move {
        sqlx::query_as::<_, (String, f64, i64)>(
            "SELECT e.status, e.progress::float8,
                    (SELECT count(*) FROM jobs j WHERE j.kind = 'issue_certificate'
                        AND j.payload->>'enrollment_id' = e.id::text)
               FROM enrollments e WHERE e.user_id = $1 AND e.course_id = $2",
        )
        .bind(s_id)
        .bind(course)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    // Wait for the statistics runs the enrollments queued, so the removals start from rest.
    for course in [by_section, by_media] {
        eventually(
            "enrollment counted",
            Duration::from_secs(20),
            || async move {
                let (_, c) = app.get(&format!("/api/v1/courses/{course}")).await;
                (c["enrollment_count"] == 1).then_some(())
            },
        )
        .await;
        assert_eq!(state(course).await, ("active".into(), 50.0, 0));
    }

    let (status, body) = app
        .call(
            "DELETE",
            &format!("/api/v1/sections/{section}"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = app
        .call(
            "DELETE",
            &format!("/api/v1/media/{}", v2[1]),
            Some(&t),
            None,
        )
        .await;
    assert!(status == 200 || status == 202, "{status} {body}");

    for course in [by_section, by_media] {
        let c = eventually(
            "completion counted",
            Duration::from_secs(30),
            || async move {
                let (_, c) = app.get(&format!("/api/v1/courses/{course}")).await;
                (c["completion_count"] == 1).then_some(c)
            },
        )
        .await;
        assert_eq!(c["enrollment_count"], 1, "{c}");
        assert_eq!(state(course).await, ("completed".into(), 100.0, 1));
    }
    let (_, mine) = app
        .call(
            "GET",
            &format!("/api/v1/courses/{by_section}/progress"),
            Some(&s),
            None,
        )
        .await;
    assert_eq!(mine["enrollment"]["status"], "completed", "{mine}");
    assert_eq!(mine["videos"].as_array().unwrap().len(), 1);
    // The certificates are issued.
    eventually("two certificates", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM certificates c JOIN enrollments e ON e.id = c.enrollment_id
              WHERE e.user_id = $1 AND c.issued_at IS NOT NULL",
        )
        .bind(s_id)
        .fetch_one(pool)
        .await
        .unwrap();
        (n == 2).then_some(())
    })
    .await;

    // Once: a later recompute (another student enrolls) completes nothing again.
    let (_, other) = mint_users(pool, 1, "student").await.remove(0);
    course_op(app, &other, by_section, "enroll").await;
    eventually(
        "second enrollment counted",
        Duration::from_secs(20),
        || async {
            let (_, c) = app.get(&format!("/api/v1/courses/{by_section}")).await;
            (c["enrollment_count"] == 2).then_some(())
        },
    )
    .await;
    assert_eq!(state(by_section).await, ("completed".into(), 100.0, 1));
    let (_, c) = app.get(&format!("/api/v1/courses/{by_section}")).await;
    assert_eq!(c["completion_count"], 1);
}

#[tokio::test]
async fn enrolling_in_a_deleted_course_is_404_and_records_nothing() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let (teacher, t) = mint_users(pool, 1, "instructor").await.remove(0);
    let (course, _) = published_course_with_videos(pool, teacher, "Gone", "0", 1, 20.0).await;
    let slug: String = sqlx::query_scalar("SELECT slug FROM courses WHERE id = $1")
        .bind(course)
        .fetch_one(pool)
        .await
        .unwrap();
    let (status, body) = app
        .call(
            "DELETE",
            &format!("/api/v1/courses/{course}"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (s_id, s) = mint_users(pool, 1, "student").await.remove(0);
    let jobs_before: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(pool)
        .await
        .unwrap();
    for key in [course.to_string(), slug] {
        let (status, body) = app
            .call(
                "POST",
                &format!("/api/v1/courses/{key}/enroll"),
                Some(&s),
                None,
            )
            .await;
        assert_eq!(status, 404, "{key}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    let (enrollments, jobs): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM enrollments WHERE user_id = $1 OR course_id = $2),
                (SELECT count(*) FROM jobs)",
    )
    .bind(s_id)
    .bind(course)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((enrollments, jobs), (0, jobs_before));
    let (status, _) = app
        .call(
            "GET",
            &format!("/api/v1/courses/{course}/progress"),
            Some(&s),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_heartbeat_needs_a_live_session_of_an_active_account() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let (teacher, _) = mint_users(pool, 1, "instructor").await.remove(0);
    let (course, videos) =
        published_course_with_videos(pool, teacher, "Sessions", "0", 1, 600.0).await;
    let users = mint_users(pool, 2, "student").await;
    for (_, token) in &users {
        course_op(&app, token, course, "enroll").await;
    }
    let ((a_id, a), (b_id, b)) = (&users[0], &users[1]);
    assert_eq!(beat(&app, a, videos[0], 10.0, 10.0).await.0, 200);
    assert_eq!(beat(&app, b, videos[0], 10.0, 10.0).await.0, 200);
    let covered = |user: Uuid| async move {
        sqlx::query_scalar::<_, i32>(
            "SELECT covered_secs(covered) FROM video_progress WHERE user_id = $1",
        )
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
    };

    // A's session ends: the access token still has a valid signature and has not expired.
    let (status, _) = app.call("POST", "/api/v1/auth/logout", Some(a), None).await;
    assert_eq!(status, 204);
    // B's account is suspended.
    sqlx::query("UPDATE users SET status = 'suspended' WHERE id = $1")
        .bind(b_id)
        .execute(pool)
        .await
        .unwrap();
    for (user, token) in [(a_id, a), (b_id, b)] {
        let_time_pass(pool, *user, 10.0).await;
        let (status, body) = beat(&app, token, videos[0], 20.0, 10.0).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "session_revoked", "{body}");
        assert_eq!(covered(*user).await, 10, "nothing recorded");
    }
    let (status, body) = beat(&app, lectern_tests::ADMIN_TOKEN, videos[0], 20.0, 10.0).await;
    assert_eq!(status, 401, "the operator is not an account: {body}");
    assert_eq!(body["error"]["code"], "user_required", "{body}");
    let (status, _) = beat(&app, "not-a-token", videos[0], 20.0, 10.0).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_video_watched_before_is_404_once_it_is_no_longer_the_students_to_watch() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let (teacher_id, teacher) = mint_users(pool, 1, "instructor").await.remove(0);
    let (course, videos) =
        published_course_with_videos(pool, teacher_id, "Gone", "0", 2, 600.0).await;
    let (s_id, s) = mint_users(pool, 1, "student").await.remove(0);
    let enroll = |op: &'static str| {
        let (app, s) = (&app, s.clone());
        async move { course_op(app, &s, course, op).await.0 }
    };
    assert_eq!(enroll("enroll").await, 201);
    for video in &videos {
        assert_eq!(beat(&app, &s, *video, 10.0, 10.0).await.0, 200);
    }
    let covered = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT sum(covered_secs(covered))::int FROM video_progress WHERE user_id = $1",
        )
        .bind(s_id)
        .fetch_one(pool)
        .await
        .unwrap()
    };

    // Dropped: the progress rows stay (for a later re-enrollment), but heartbeats are refused.
    assert_eq!(enroll("drop").await, 200);
    let_time_pass(pool, s_id, 10.0).await;
    assert_eq!(beat(&app, &s, videos[0], 20.0, 10.0).await.0, 404);
    assert_eq!(covered().await, 20, "nothing recorded while dropped");
    let status = enroll("enroll").await;
    assert!(status == 200 || status == 201, "{status}");
    let (status, p) = beat(&app, &s, videos[0], 20.0, 10.0).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["watched_secs"], 20);

    // The instructor removes the second video's section, then the first video itself.
    let section = into_own_section(pool, course, videos[1]).await;
    let (status, body) = app
        .call(
            "DELETE",
            &format!("/api/v1/sections/{section}"),
            Some(&teacher),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = app
        .call(
            "DELETE",
            &format!("/api/v1/media/{}", videos[0]),
            Some(&teacher),
            None,
        )
        .await;
    assert!(status == 200 || status == 202, "{status} {body}");
    let_time_pass(pool, s_id, 10.0).await;
    // The removed video's progress goes with it; the other row stays as it was.
    let before = covered().await;
    assert_eq!(before, 10);
    for video in &videos {
        let (status, body) = beat(&app, &s, *video, 30.0, 10.0).await;
        assert_eq!(status, 404, "{body}");
    }
    assert_eq!(covered().await, before, "nothing recorded after removal");
}

#[tokio::test]
async fn concurrent_heartbeats_of_many_players_each_get_their_own_answer() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let (teacher, _) = mint_users(pool, 1, "instructor").await.remove(0);
    let (course, videos) =
        published_course_with_videos(pool, teacher, "Crowd", "0", 3, 3600.0).await;
    let students = mint_users(pool, 60, "student").await;
    for (_, token) in &students {
        course_op(&app, token, course, "enroll").await;
    }
    // Student i opens video i % 3 by watching its first i % 25 + 1 seconds.
    let opening = |i: usize| i32::try_from(i % 25 + 1).unwrap();
    for (i, (_, token)) in students.iter().enumerate() {
        let secs = f64::from(opening(i));
        let (status, p) = beat(&app, token, videos[i % 3], secs, secs).await;
        assert_eq!(status, 200, "{p}");
    }
    sqlx::query(
        "UPDATE video_progress SET first_watched_at = now() - interval '1 hour',
                                   last_heartbeat_at = now() - interval '1 minute'",
    )
    .execute(pool)
    .await
    .unwrap();
    // Student 58's session ends and student 59 drops, just before the crowd's heartbeats.
    app.call("POST", "/api/v1/auth/logout", Some(&students[58].1), None)
        .await;
    course_op(&app, &students[59].1, course, "drop").await;

    // Everyone at once: student i watches seconds 1000 + i .. 1010 + i. Student 0 watches
    // 1005..1010 and, in a second heartbeat at the same time, 2005..2010 (5 s each: the later
    // of the two comes no time after the other, and may add only the 5 s of slack).
    let mut calls = Vec::new();
    for (i, (_, token)) in students.iter().enumerate() {
        let (end, watched) = (1010.0 + i as f64, if i == 0 { 5.0 } else { 10.0 });
        calls.push((i, beat(&app, token, videos[i % 3], end, watched)));
    }
    let second = beat(&app, &students[0].1, videos[0], 2010.0, 5.0);
    let (answers, (second_status, second_body)) = tokio::join!(
        futures::future::join_all(
            calls
                .into_iter()
                .map(|(i, call)| async move { (i, call.await) })
        ),
        second
    );
    assert_eq!(second_status, 200, "{second_body}");
    for (i, (status, body)) in answers {
        match i {
            58 => assert_eq!(status, 401, "{body}"),
            59 => assert_eq!(status, 404, "{body}"),
            _ => {
                assert_eq!(status, 200, "student {i}: {body}");
                // The opening seconds plus these 10; student 0's answer may or may not include
                // its other heartbeat's 5, whichever was applied first.
                let watched = body["watched_secs"].as_i64().unwrap();
                if i == 0 {
                    let own = i64::from(opening(i)) + 5;
                    assert!(watched == own || watched == own + 5, "{body}");
                } else {
                    let own = i64::from(opening(i)) + 10;
                    assert_eq!(
                        watched, own,
                        "student {i} got someone else's answer: {body}"
                    );
                    assert_eq!(body["last_position"], 1010.0 + i as f64, "{body}");
                }
                assert_eq!(body["media_id"], videos[i % 3].to_string(), "{body}");
            }
        }
    }
    let stored: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT user_id, covered_secs(covered) FROM video_progress ORDER BY user_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (i, (id, _)) in students.iter().enumerate() {
        let covered = stored.iter().find(|(u, _)| u == id).unwrap().1;
        let expected = match i {
            0 => opening(0) + 5 + 5,
            58 | 59 => opening(i),
            _ => opening(i) + 10,
        };
        assert_eq!(covered, expected, "student {i}");
    }
}

/// `POST /courses/{course}/enroll` as a student, with the `Idempotency-Key` a paid course needs.
async fn enroll_keyed(app: &TestApp, token: &str, course: Uuid) -> (u16, Value) {
    let req = app
        .http
        .post(format!("{}/api/v1/courses/{course}/enroll", app.url))
        .bearer_auth(token)
        .header("Idempotency-Key", Uuid::new_v4().to_string());
    let (status, body, _) = app.raw(req).await;
    (status, body)
}

async fn grant(app: &TestApp, token: Option<&str>, course: Uuid, user: &str) -> (u16, Value) {
    let path = format!("/api/v1/courses/{course}/grants");
    let body = json!({ "user_id": user });
    match token {
        Some(t) => app.call("POST", &path, Some(t), Some(&body)).await,
        None => app.post_as_admin(&path, &body).await,
    }
}

#[tokio::test]
async fn a_paid_course_needs_a_grant_and_re_enrolling_needs_one_again() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let teachers = mint_users(pool, 2, "instructor").await;
    let ((teacher, t), (_, stranger)) = (teachers[0].clone(), teachers[1].clone());
    let students = mint_users(pool, 2, "student").await;
    let ((student, s), (_, other)) = (students[0].clone(), students[1].clone());
    let (course, videos) =
        published_course_with_videos(pool, teacher, "Paid Knots", "49.00", 1, 60.0).await;
    let enrollments = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT status FROM enrollments WHERE user_id = $1 AND course_id = $2",
        )
        .bind(student)
        .bind(course)
        .fetch_optional(pool)
        .await
        .unwrap()
    };

    // A verified student with an Idempotency-Key is not enough: 402, nothing recorded, no video.
    let (status, body) = enroll_keyed(&app, &s, course).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "payment_required");
    assert_eq!(enrollments().await, None);
    let (status, body) = app
        .call(
            "GET",
            &format!("/api/v1/media/{}/playback", videos[0]),
            Some(&s),
            None,
        )
        .await;
    assert!(status == 403 || status == 404, "{status}: {body}");

    // Only the course's instructor (or an admin) grants: not another instructor, not the student.
    let student_id = student.to_string();
    let (status, body) = grant(&app, Some(&stranger), course, &student_id).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = grant(&app, Some(&s), course, &student_id).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = grant(&app, Some(&t), course, "not-an-id").await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = grant(&app, Some(&t), course, &Uuid::now_v7().to_string()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(enroll_keyed(&app, &s, course).await.0, 402);

    // The instructor grants (audited; granting again changes nothing); the student enrolls.
    let (status, body) = grant(&app, Some(&t), course, &student_id).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["source"], "grant");
    assert_eq!(grant(&app, Some(&t), course, &student_id).await.0, 200);
    let audited: Vec<(Option<Uuid>, Value)> = sqlx::query_as(
        "SELECT actor_id, data FROM audit_log WHERE event = 'course_access_granted' AND user_id = $1",
    )
    .bind(student)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0].0, Some(teacher));
    assert_eq!(audited[0].1["course_id"], course.to_string());
    let (status, body) = enroll_keyed(&app, &s, course).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["enrollment"]["price_paid"], "49.00");
    // The grant is the student's only: another student is still refused.
    assert_eq!(enroll_keyed(&app, &other, course).await.0, 402);

    // Drop and come back while the grant holds.
    assert_eq!(course_op(&app, &s, course, "drop").await.0, 200);
    let (status, body) = enroll_keyed(&app, &s, course).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "reactivated");

    // Revoked (by a stranger: no; by the instructor: yes), the course is taken back, and neither
    // enrolling again nor re-activating after the drop gets in.
    let revoke = format!("/api/v1/courses/{course}/grants/{student}");
    assert_eq!(
        app.call("DELETE", &revoke, Some(&stranger), None).await.0,
        403
    );
    let (status, body) = app.call("DELETE", &revoke, Some(&t), None).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(app.call("DELETE", &revoke, Some(&t), None).await.0, 404);
    assert_eq!(enrollments().await.as_deref(), Some("dropped"));
    let (status, body) = enroll_keyed(&app, &s, course).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "payment_required");
    assert_eq!(enrollments().await.as_deref(), Some("dropped"));

    // An admin's grant opens it again.
    let (status, body) = grant(&app, None, course, &student_id).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = enroll_keyed(&app, &s, course).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(enrollments().await.as_deref(), Some("active"));
}

#[tokio::test]
async fn dropping_and_re_enrolling_eight_times_tells_the_instructor_once() {
    // No worker at first: the queued jobs show what each enroll and drop asked for.
    let app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let pool = &app.db.pool;
    let (teacher, _) = mint_users(pool, 1, "instructor").await.remove(0);
    let (_, s) = mint_users(pool, 1, "student").await.remove(0);
    let (course, _) = published_course_with_videos(pool, teacher, "Flaky", "0", 1, 60.0).await;
    for cycle in 0..8 {
        let (status, body) = course_op(&app, &s, course, "enroll").await;
        assert!(status == 201 || status == 200, "cycle {cycle}: {body}");
        let (status, body) = course_op(&app, &s, course, "drop").await;
        assert_eq!(status, 200, "cycle {cycle}: {body}");
    }
    assert_eq!(course_op(&app, &s, course, "enroll").await.0, 200);
    let queued = |kind: &'static str| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE kind = $1")
            .bind(kind)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(queued("fan_out_notifications").await, 1);
    // Recomputes coalesce: one waits for all 17 changes.
    assert_eq!(queued("recompute_course_stats").await, 1);

    let _worker = app.spawn_worker("worker.log");
    let notified = eventually(
        "the instructor's notification",
        Duration::from_secs(20),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM notifications WHERE user_id = $1 AND type = 'new_enrollment'",
            )
            .bind(teacher)
            .fetch_one(pool)
            .await
            .unwrap();
            (n > 0).then_some(n)
        },
    )
    .await;
    eventually("the counters", Duration::from_secs(20), || async {
        let (_, c) = app.get(&format!("/api/v1/courses/{course}")).await;
        (c["enrollment_count"] == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE user_id = $1 AND type = 'new_enrollment'",
    )
    .bind(teacher)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((notified, n), (1, 1));
}

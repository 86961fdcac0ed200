//! Operators and dead letters: failed jobs keep their payload and every attempt's error, and can be retried.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use lectern_tests::TestApp;
use serde_json::{Value, json};

#[tokio::test]
async fn dead_letters_are_listed_inspected_and_retried() {
    let app = TestApp::spawn().await;
    let mut failed = Vec::new();
    for to in ["bounce-1@example.com", "bounce-2@example.com"] {
        let (_, body) = app
            .post_as_admin("/api/v1/admin/email/test", &json!({ "to": to }))
            .await;
        let id = body["job"]["id"].as_str().unwrap().to_owned();
        app.wait_for_job(&id, "failed", Duration::from_secs(20))
            .await;
        failed.push(id);
    }
    let (_, ok) = app
        .post_as_admin(
            "/api/v1/admin/email/test",
            &json!({"to": "fine@example.com"}),
        )
        .await;
    let ok_id = ok["job"]["id"].as_str().unwrap().to_owned();
    app.wait_for_job(&ok_id, "succeeded", Duration::from_secs(20))
        .await;

    let (status, page) = app
        .get_as_admin("/api/v1/admin/jobs?state=failed&kind=send_email")
        .await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![failed[1].as_str(), failed[0].as_str()],
        "newest first, only failed"
    );
    let (_, none) = app
        .get_as_admin("/api/v1/admin/jobs?state=failed&kind=transcode_video")
        .await;
    assert_eq!(none["items"], json!([]));

    let (status, detail) = app
        .get_as_admin(&format!("/api/v1/admin/jobs/{}", failed[0]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(detail["payload"]["to"], "bounce-1@example.com");
    assert_eq!(detail["errors"].as_array().unwrap().len(), 1);
    assert!(
        detail["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("refused")
    );
    assert!(detail["errors"][0]["at"].is_string());

    let (status, queues) = app.get_as_admin("/api/v1/admin/queues").await;
    assert_eq!(status, 200);
    assert_eq!(queues["next_cursor"], Value::Null, "{queues}");
    let email = queues["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "email")
        .unwrap();
    assert_eq!(email["failed"], 2);

    // Retrying one runs it again (it fails again here: the mailbox still refuses), history kept.
    let (status, retried) = app
        .post_as_admin(
            &format!("/api/v1/admin/jobs/{}/retry", failed[0]),
            &json!({}),
        )
        .await;
    assert_eq!(status, 202, "{retried}");
    assert_eq!(retried["job"]["state"], "queued");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, detail) = app
            .get_as_admin(&format!("/api/v1/admin/jobs/{}", failed[0]))
            .await;
        if detail["state"] == "failed" && detail["attempts"] == 2 {
            assert_eq!(detail["errors"].as_array().unwrap().len(), 2);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, body) = app
        .post_as_admin(&format!("/api/v1/admin/jobs/{ok_id}/retry"), &json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("job_not_failed"))
    );
    let (status, _) = app
        .post_as_admin(
            &format!("/api/v1/admin/jobs/{}/retry", uuid::Uuid::now_v7()),
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);

    let (status, bulk) = app
        .post_as_admin("/api/v1/admin/jobs/retry", &json!({"kind": "send_email"}))
        .await;
    assert_eq!((status, bulk["retried"].as_i64()), (202, Some(2)));

    // Students see none of it.
    let student = app.register("curious@example.com", "student").await;
    let token = student["access_token"].as_str().unwrap();
    for path in ["/api/v1/admin/jobs?state=failed", "/api/v1/admin/queues"] {
        assert_eq!(app.call("GET", path, Some(token), None).await.0, 403);
    }
    assert_eq!(
        app.call("GET", &format!("/api/v1/jobs/{ok_id}"), Some(token), None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn a_job_of_a_killed_worker_runs_again_on_a_live_one() {
    let mut app = TestApp::spawn().await;
    let (_, body) = app
        .post_as_admin(
            "/api/v1/admin/email/test",
            &json!({"to": "slow@example.com"}),
        )
        .await;
    let id = body["job"]["id"].as_str().unwrap().to_owned();
    app.wait_for_job(&id, "running", Duration::from_secs(20))
        .await;

    // SIGKILL mid-job: no shutdown, no cleanup.
    let mut killed = app.worker.take().unwrap();
    killed.signal("KILL");
    killed.wait_exit(Duration::from_secs(5)).expect("killed");
    let started = std::time::Instant::now();
    let replacement = app.spawn_worker("worker-2.log");

    let deadline = started + Duration::from_secs(60);
    let job = loop {
        let (_, job) = app.get_as_admin(&format!("/api/v1/admin/jobs/{id}")).await;
        if job["state"] == "succeeded" || std::time::Instant::now() > deadline {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(job["state"], "succeeded", "{job}\n{}", replacement.output());
    let recovered_in = started.elapsed();
    assert!(recovered_in < Duration::from_secs(60), "{recovered_in:?}");
    assert_eq!(job["attempts"], 2);
    assert!(
        job["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("stopped responding"),
        "{job}"
    );
    println!("recovered in {recovered_in:?}");
}

#[tokio::test]
async fn a_thousand_recomputes_for_one_course_coalesce_into_one_job() {
    use lectern_core::jobs::{self, Job, RecomputeCourseStats};
    let db = lectern_tests::TestDb::create().await;
    let course = uuid::Uuid::now_v7();
    let recompute = |course_id| Job::RecomputeCourseStats(RecomputeCourseStats { course_id });

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..50 {
                let mut tx = pool.begin().await.unwrap();
                let job = jobs::insert(&mut tx, &recompute(course), None, None)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                ids.push((job.id, job.coalesced));
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 1000);
    let fresh = all.iter().filter(|(_, coalesced)| !coalesced).count();
    assert_eq!(fresh, 1, "one new job, 999 coalesced into it");
    assert!(all.iter().all(|(id, _)| *id == all[0].0));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    // Debounced: it runs a little later, so the burst folds into it.
    let (delay,): (f64,) =
        sqlx::query_as("SELECT EXTRACT(EPOCH FROM run_at - created_at)::float8 FROM jobs")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(delay >= 1.5, "{delay}");

    // Another course gets its own job.
    let mut tx = db.pool.begin().await.unwrap();
    let other = jobs::insert(&mut tx, &recompute(uuid::Uuid::now_v7()), None, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(!other.coalesced);

    // Once the queued one is running, a new trigger queues a fresh run: no change is missed.
    sqlx::query("UPDATE jobs SET state = 'running', lease_expires_at = now() + interval '30 seconds' WHERE id = $1")
        .bind(all[0].0)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let next = jobs::insert(&mut tx, &recompute(course), None, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(!next.coalesced);
    assert_ne!(next.id, all[0].0);
}

#[tokio::test]
async fn the_watchdog_cancels_an_attempt_past_its_time_limit() {
    let app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: false,
        env: vec![("JOB_TIMEOUTS".into(), "send_email=1".into())],
    })
    .await;
    // The mail server takes 5 s to accept this message; the limit is 1 s.
    let (_, body) = app
        .post_as_admin(
            "/api/v1/admin/email/test",
            &json!({"to": "slow-stuck@example.com"}),
        )
        .await;
    let id = body["job"]["id"].as_str().unwrap();
    let job = app
        .wait_for_job(id, "retrying", Duration::from_secs(20))
        .await;
    assert_eq!(job["attempts"], 1);
    assert!(
        job["last_error"]
            .as_str()
            .unwrap()
            .contains("cancelled by the watchdog after 1 s"),
        "{job}"
    );
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_job_finish_then_exits_0() {
    let mut app = TestApp::spawn().await;
    let id = app.queue_test_mail("slow-graceful@example.com").await;
    app.wait_for_job(&id, "running", Duration::from_secs(20))
        .await;
    app.terminate_worker(Duration::from_secs(15));
    let (_, job) = app.get_as_admin(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(app.smtp.messages().len(), 1);
}

#[tokio::test]
async fn redis_keeps_only_pending_deliveries_after_a_vacuum() {
    let app = TestApp::spawn().await;
    let (_, body) = app
        .post_as_admin(
            "/api/v1/admin/email/test",
            &json!({"to": "tidy@example.com"}),
        )
        .await;
    app.wait_for_job(
        body["job"]["id"].as_str().unwrap(),
        "succeeded",
        Duration::from_secs(20),
    )
    .await;
    let config = lectern_core::config::Config::from_source(|k| app.env.get(k).cloned()).unwrap();
    let services = lectern_core::Services::new(config).unwrap();
    let mut redis = redis::Client::open(lectern_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let queue = format!("{}-email", app.prefix);
    // apalis-redis acknowledges asynchronously; wait until it has recorded the delivery as done.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let done: i64 = redis::cmd("SCARD")
            .arg(format!("{queue}:done"))
            .query_async(&mut redis)
            .await
            .unwrap();
        if done >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the delivery was never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dropped = lectern_core::jobs::vacuum_redis(&services).await.unwrap();
    assert!(dropped >= 1, "{dropped}");
    let done: i64 = redis::cmd("SCARD")
        .arg(format!("{queue}:done"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let data: i64 = redis::cmd("HLEN")
        .arg(format!("{queue}:data"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!((done, data), (0, 0));
    // The job's history is untouched: it lives in PostgreSQL.
    let state: String = sqlx::query_scalar("SELECT state FROM jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(state, "succeeded");
}

#[tokio::test]
async fn a_job_cut_short_by_shutdown_goes_back_to_the_queue_uncounted() {
    let mut app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: false,
        env: vec![("SHUTDOWN_TIMEOUT_SECS".into(), "1".into())],
    })
    .await;
    // Takes 5 s; the shutdown timeout is 1 s.
    let id = app.queue_test_mail("slow-cut@example.com").await;
    app.wait_for_job(&id, "running", Duration::from_secs(20))
        .await;
    app.terminate_worker(Duration::from_secs(10));
    let (_, job) = app.get_as_admin(&format!("/api/v1/admin/jobs/{id}")).await;
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(0)),
        "{job}"
    );

    // The next worker runs it as its first attempt.
    let _next = app.spawn_worker("worker-2.log");
    let job = app
        .wait_for_job(&id, "succeeded", Duration::from_secs(30))
        .await;
    assert_eq!(job["attempts"], 1);
}

/// Jobs whose handler records its effect in a PostgreSQL ledger, run by two worker processes, one
/// SIGKILLed mid-run and replaced: every effect is recorded exactly once and none is missing.
#[tokio::test]
async fn through_a_worker_crash_every_effect_is_recorded_exactly_once() {
    const JOBS: usize = 600;
    let app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: true,
        env: vec![("WORKER_CONCURRENCY_DEFAULT".into(), "8".into())],
    })
    .await;
    let mut doomed = app.spawn_worker("worker-1.log");
    let survivor = app.spawn_worker("worker-2.log");
    let (status, body) = app
        .post_as_admin(
            "/api/v1/admin/jobs/noop",
            &json!({"count": JOBS, "sleep_ms": 100, "record": true}),
        )
        .await;
    assert_eq!(
        (status, body["queued"].as_u64()),
        (202, Some(JOBS as u64)),
        "{body}"
    );
    let ids: Vec<uuid::Uuid> = body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().parse().unwrap())
        .collect();

    let recorded = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_ledger")
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
    };
    // Mid-run: both workers busy (each has 8 jobs of 100 ms running), most jobs still to go.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while recorded().await < 100 {
        assert!(std::time::Instant::now() < deadline, "{}", doomed.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.signal("KILL");
    doomed.wait_exit(Duration::from_secs(5)).expect("killed");
    let killed_at = std::time::Instant::now();
    let at_kill = recorded().await;
    assert!(
        at_kill < JOBS as i64 / 2,
        "{at_kill}: the kill came too late"
    );
    let fresh = app.spawn_worker("worker-3.log");

    // Jobs the killed worker was running come back once their lease lapses (30 s).
    let deadline = killed_at + Duration::from_secs(60);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        if done == JOBS as i64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{done} of {JOBS} jobs done 60 s after the crash\n--- survivor ---\n{}\n--- fresh ---\n{}",
            survivor.output(),
            fresh.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("all jobs done {:?} after the crash", killed_at.elapsed());

    let ledger: Vec<(uuid::Uuid, i32)> =
        sqlx::query_as("SELECT job_id, effects FROM job_ledger ORDER BY job_id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    let mut expected = ids.clone();
    expected.sort();
    let recorded_ids: Vec<uuid::Uuid> = ledger.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        recorded_ids, expected,
        "every job has exactly one ledger row"
    );
    let twice: Vec<_> = ledger.iter().filter(|(_, effects)| *effects != 1).collect();
    assert!(
        twice.is_empty(),
        "effects applied more than once: {twice:?}"
    );

    // The crash did hit running jobs: they were taken back and completed by another attempt.
    let (retried, lost): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE attempts > 1 AND last_error LIKE '%stopped responding%'),
                count(*) FILTER (WHERE state <> 'succeeded')
           FROM jobs",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(retried >= 1, "no job was running on the killed worker");
    assert_eq!(lost, 0);
    let by_retried_attempt: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_ledger l JOIN jobs j ON j.id = l.job_id
          WHERE j.attempts > 1 AND l.attempt = j.attempts",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        by_retried_attempt, retried,
        "a retried job's effect comes from its last attempt"
    );
}

/// Queues do not share slots: with every media slot held by long jobs (and more queued behind
/// them), a mail still starts at once.
#[tokio::test]
async fn mail_starts_within_a_second_while_every_media_slot_is_busy() {
    let app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: false,
        env: vec![("WORKER_CONCURRENCY_MEDIA".into(), "2".into())],
    })
    .await;
    // The diagnostic route is for operators, and checks what it is given.
    let student = app.register("nosy@example.com", "student").await;
    let token = student["access_token"].as_str().unwrap();
    let noop = "/api/v1/admin/jobs/noop";
    assert_eq!(
        app.call("POST", noop, Some(token), Some(&json!({})))
            .await
            .0,
        403
    );
    for bad in [
        json!({"count": 0}),
        json!({"count": 10_001}),
        json!({"sleep_ms": 600_001}),
    ] {
        let (status, body) = app.post_as_admin(noop, &bad).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    assert_eq!(
        app.post_as_admin(noop, &json!({"queue": "gpu"})).await.0 / 100,
        4
    );

    let (status, body) = app
        .post_as_admin(
            "/api/v1/admin/jobs/noop",
            &json!({"count": 6, "sleep_ms": 30_000, "queue": "media"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let media = || async {
        let (_, queues) = app.get_as_admin("/api/v1/admin/queues").await;
        queues["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == "media")
            .cloned()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while media().await["running"] != 2 {
        assert!(std::time::Instant::now() < deadline, "{}", app.worker_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let id = app.queue_test_mail("isolated@example.com").await;
    let job = app
        .wait_for_job(&id, "succeeded", Duration::from_secs(10))
        .await;
    let wait: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM started_at - created_at)::float8 FROM jobs WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(&id).unwrap())
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(wait < 1.0, "the mail waited {wait} s to start: {job}");
    let delivered = app
        .smtp
        .messages()
        .iter()
        .filter(|m| m.recipients.iter().any(|r| r == "isolated@example.com"))
        .count();
    assert_eq!(delivered, 1);
    // The media queue was saturated the whole time: still two running, four waiting.
    let media = media().await;
    assert_eq!(
        (media["running"].as_i64(), media["queued"].as_i64()),
        (Some(2), Some(4)),
        "{media}"
    );
}

/// The value of the sample `series` (name and labels, exactly) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn scrape(app: &TestApp, url: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(res) = app.http.get(url).send().await {
            assert_eq!(res.status().as_u16(), 200);
            return res.text().await.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never served {url}\n{}",
            app.worker_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count_in_state(app: &TestApp, state: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = $1")
        .bind(state)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_worker_counts_attempts_per_kind_at_its_own_metrics_endpoint() {
    const JOBS: u64 = 25;
    let port = lectern_tests::free_port();
    let app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: false,
        env: vec![("WORKER_METRICS_ADDR".into(), format!("127.0.0.1:{port}"))],
    })
    .await;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let before = scrape(&app, &url).await;
    assert_eq!(
        sample(&before, "lectern_worker_jobs_started_total{kind=\"noop\"}"),
        Some(0.0),
        "{before}"
    );
    assert!(before.contains("# TYPE lectern_worker_job_duration_seconds histogram"));

    let (status, body) = app
        .post_as_admin(
            "/api/v1/admin/jobs/noop",
            &json!({"count": JOBS, "sleep_ms": 20}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = app
        .post_as_admin("/api/v1/admin/jobs/noop", &json!({"fail": "permanent"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count_in_state(&app, "succeeded").await < JOBS as i64
        || count_in_state(&app, "failed").await < 1
    {
        assert!(std::time::Instant::now() < deadline, "{}", app.worker_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The counters move just after the outcome is committed.
    let noop = |name: &str| format!("{name}{{kind=\"noop\"}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = scrape(&app, &url).await;
        if sample(&text, &noop("lectern_worker_jobs_failed_total")) == Some(1.0)
            && sample(&text, &noop("lectern_worker_jobs_succeeded_total")) == Some(JOBS as f64)
        {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let all = JOBS as f64 + 1.0;
    assert_eq!(
        sample(&text, &noop("lectern_worker_jobs_started_total")),
        Some(all)
    );
    assert_eq!(
        sample(&text, &noop("lectern_worker_jobs_retried_total")),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, &noop("lectern_worker_jobs_in_flight")),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, &noop("lectern_worker_job_duration_seconds_count")),
        Some(all)
    );
    assert_eq!(
        sample(
            &text,
            "lectern_worker_job_duration_seconds_bucket{kind=\"noop\",le=\"+Inf\"}"
        ),
        Some(all)
    );
    // Each succeeded attempt slept 20 ms: none fits the 10 ms bucket, all fit 1 s.
    let fast = sample(
        &text,
        "lectern_worker_job_duration_seconds_bucket{kind=\"noop\",le=\"0.01\"}",
    )
    .unwrap();
    assert!(fast <= 1.0, "{fast}");
    assert_eq!(
        sample(
            &text,
            "lectern_worker_job_duration_seconds_bucket{kind=\"noop\",le=\"1\"}"
        ),
        Some(all)
    );
    let sum = sample(&text, &noop("lectern_worker_job_duration_seconds_sum")).unwrap();
    assert!(sum >= 0.02 * JOBS as f64, "{sum}");
    // Other kinds are listed, at zero.
    assert_eq!(
        sample(
            &text,
            "lectern_worker_jobs_started_total{kind=\"send_email\"}"
        ),
        Some(0.0)
    );
    let res = app
        .http
        .get(format!("http://127.0.0.1:{port}/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);

    // The API reports the failed one, and nothing left due.
    let (_, api) = app.get("/metrics").await;
    let api = api.as_str().unwrap();
    assert_eq!(
        sample(api, "lectern_jobs{queue=\"default\",state=\"failed\"}"),
        Some(1.0),
        "{api}"
    );
    assert_eq!(
        sample(api, "lectern_jobs_due{queue=\"default\"}"),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_second_worker_on_a_taken_metrics_port_runs_without_metrics() {
    let port = lectern_tests::free_port();
    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: false,
        env: vec![("WORKER_METRICS_ADDR".into(), format!("127.0.0.1:{port}"))],
    })
    .await;
    let (_, body) = app
        .post_as_admin("/api/v1/admin/jobs/noop", &json!({}))
        .await;
    let id = body["ids"][0].as_str().unwrap();
    app.wait_for_job(id, "succeeded", Duration::from_secs(20))
        .await;
    assert!(
        app.worker_log().contains("cannot serve worker metrics"),
        "{}",
        app.worker_log()
    );
    drop(taken);
}

#[tokio::test]
async fn a_job_scheduled_for_later_does_not_start_before_its_time() {
    use lectern_core::jobs::{self, Job, Noop, Queue};
    let app = TestApp::spawn().await;
    let services = app.services();
    let noop = Job::Noop(Noop {
        sleep_ms: 0,
        record: false,
        queue: Queue::Default,
        fail: None,
    });
    let wanted = chrono::Utc::now() + chrono::Duration::seconds(3);
    let mut tx = app.db.pool.begin().await.unwrap();
    let later = jobs::insert(&mut tx, &noop, None, Some(wanted))
        .await
        .unwrap();
    let now = jobs::insert(&mut tx, &noop, None, None).await.unwrap();
    tx.commit().await.unwrap();
    assert!(later.scheduled && !now.scheduled);
    services.jobs.dispatch(&later).await;
    services.jobs.dispatch(&now).await;

    // The one due now runs at once; the other waits.
    app.wait_for_job(&now.id.to_string(), "succeeded", Duration::from_secs(10))
        .await;
    let early = wanted - chrono::Duration::milliseconds(800);
    while chrono::Utc::now() < early {
        let (_, job) = app
            .get_as_admin(&format!("/api/v1/jobs/{}", later.id))
            .await;
        assert_eq!(job["state"], "queued", "started early: {job}");
        assert!(job["started_at"].is_null(), "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = app
        .wait_for_job(&later.id.to_string(), "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(job["attempts"], 1);
    let (run_at, started_at): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT run_at, started_at FROM jobs WHERE id = $1")
            .bind(later.id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(started_at >= run_at, "started {started_at}, due {run_at}");
    let late = started_at - run_at;
    assert!(
        late < chrono::Duration::milliseconds(2500),
        "started {late} after it was due"
    );
    // Nothing went through apalis-redis's scheduled set.
    let scheduled: i64 =
        redis_query(redis::cmd("ZCARD").arg(
            lectern_core::jobs::queue_config(&app.prefix, Queue::Default).scheduled_jobs_set(),
        ))
        .await;
    assert_eq!(scheduled, 0);
}

async fn redis_query<T: redis::FromRedisValue>(cmd: &mut redis::Cmd) -> T {
    let mut redis = redis::Client::open(lectern_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    cmd.query_async(&mut redis).await.unwrap()
}

#[tokio::test]
async fn a_retryable_failure_is_retried_until_its_attempts_run_out() {
    let port = lectern_tests::free_port();
    let app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: false,
        env: vec![
            ("JOB_RETRY_BASE_MS".into(), "200".into()),
            ("WORKER_METRICS_ADDR".into(), format!("127.0.0.1:{port}")),
        ],
    })
    .await;
    let (status, body) = app
        .post_as_admin("/api/v1/admin/jobs/noop", &json!({"fail": "retryable"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["ids"][0].as_str().unwrap().to_owned();
    let (_, body) = app
        .post_as_admin("/api/v1/admin/jobs/noop", &json!({"fail": "permanent"}))
        .await;
    let permanent = body["ids"][0].as_str().unwrap().to_owned();

    app.wait_for_job(&id, "failed", Duration::from_secs(30))
        .await;
    let (_, job) = app.get_as_admin(&format!("/api/v1/admin/jobs/{id}")).await;
    let max = job["max_attempts"].as_i64().unwrap();
    assert_eq!(max, 3, "the noop kind's budget");
    assert_eq!(job["attempts"], max, "{job}");
    let errors = job["errors"].as_array().unwrap();
    assert_eq!(errors.len() as i64, max, "one error per attempt: {job}");
    let mut previous: Option<chrono::DateTime<chrono::Utc>> = None;
    for (n, error) in errors.iter().enumerate() {
        assert_eq!(error["attempt"], n as i64 + 1);
        assert!(
            error["error"].as_str().unwrap().contains("(retryable)"),
            "{error}"
        );
        let at: chrono::DateTime<chrono::Utc> = error["at"].as_str().unwrap().parse().unwrap();
        if let Some(previous) = previous {
            // Each retry waited for its backoff (at least half the ceiling: 100 ms, then 200 ms).
            let gap = at - previous;
            assert!(gap >= chrono::Duration::milliseconds(100), "{gap}");
        }
        previous = Some(at);
    }
    assert!(job["finished_at"].is_string());
    assert_eq!(job["payload"]["fail"], "retryable");

    // A permanent failure is never retried.
    let job = app
        .wait_for_job(&permanent, "failed", Duration::from_secs(10))
        .await;
    assert_eq!(job["attempts"], 1, "{job}");

    // Both are dead letters an operator can find.
    let (_, page) = app
        .get_as_admin("/api/v1/admin/jobs?state=failed&kind=noop")
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");

    // The worker counted two retries and two attempts that failed for good.
    let text = scrape(&app, &format!("http://127.0.0.1:{port}/metrics")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut text = text;
    while sample(&text, "lectern_worker_jobs_failed_total{kind=\"noop\"}") != Some(2.0) {
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = scrape(&app, &format!("http://127.0.0.1:{port}/metrics")).await;
    }
    assert_eq!(
        sample(&text, "lectern_worker_jobs_retried_total{kind=\"noop\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "lectern_worker_jobs_started_total{kind=\"noop\"}"),
        Some(4.0)
    );
    // No retry went through apalis-redis's scheduled set.
    let scheduled: i64 = redis_query(
        redis::cmd("ZCARD").arg(
            lectern_core::jobs::queue_config(&app.prefix, lectern_core::jobs::Queue::Default)
                .scheduled_jobs_set(),
        ),
    )
    .await;
    assert_eq!(scheduled, 0);
}

/// Keys of this test's Redis prefix, and the memory they use (`MEMORY USAGE`, bytes).
async fn prefix_footprint(prefix: &str, pattern: &str) -> (usize, i64) {
    let mut redis = redis::Client::open(lectern_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}{pattern}"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut redis)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut bytes = 0;
    for key in &keys {
        let used: Option<i64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        bytes += used.unwrap_or(0);
    }
    (keys.len(), bytes)
}

#[tokio::test]
async fn redis_returns_to_its_baseline_after_twenty_thousand_jobs() {
    const JOBS: i64 = 20_000;
    let app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: false,
        env: vec![("WORKER_CONCURRENCY_DEFAULT".into(), "64".into())],
    })
    .await;
    // A first job: the worker has registered with Redis once it has run.
    let (_, body) = app
        .post_as_admin("/api/v1/admin/jobs/noop", &json!({}))
        .await;
    app.wait_for_job(
        body["ids"][0].as_str().unwrap(),
        "succeeded",
        Duration::from_secs(20),
    )
    .await;
    let services = app.services();
    let vacuum = || async {
        // The worker's own vacuum holds a lock for a while after it runs: take it.
        let _: () = redis_query(redis::cmd("DEL").arg(format!("{}-vacuum-lock", app.prefix))).await;
        lectern_core::jobs::vacuum_redis(&services).await.unwrap()
    };
    let settle = || async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            vacuum().await;
            let (meta, _) = prefix_footprint(&app.prefix, "-*:meta:*").await;
            if meta == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{meta} task records left after the vacuum"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    settle().await;
    let (base_keys, base_bytes) = prefix_footprint(&app.prefix, "-*").await;

    let started = std::time::Instant::now();
    for _ in 0..2 {
        let (status, body) = app
            .post_as_admin("/api/v1/admin/jobs/noop", &json!({"count": JOBS / 2}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let deadline = started + Duration::from_secs(180);
    while count_in_state(&app, "succeeded").await < JOBS + 1 {
        assert!(std::time::Instant::now() < deadline, "{}", app.worker_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained = started.elapsed();
    let (peak_keys, peak_bytes) = prefix_footprint(&app.prefix, "-*").await;
    settle().await;
    let (keys, bytes) = prefix_footprint(&app.prefix, "-*").await;
    println!(
        "{JOBS} jobs drained in {drained:?}; Redis keys/bytes: baseline {base_keys}/{base_bytes}, \
         drained {peak_keys}/{peak_bytes}, vacuumed {keys}/{bytes}"
    );
    let queue = format!("{}-default", app.prefix);
    for (cmd, key) in [
        ("HLEN", format!("{queue}:data")),
        ("SCARD", format!("{queue}:done")),
        ("SCARD", format!("{queue}:dead")),
        ("LLEN", format!("{queue}:active")),
        ("ZCARD", format!("{queue}:scheduled")),
        ("HLEN", format!("{queue}:meta:result")),
    ] {
        let n: i64 = redis_query(redis::cmd(cmd).arg(&key)).await;
        assert_eq!(n, 0, "{cmd} {key}");
    }
    assert!(
        keys <= base_keys + 2,
        "keys: {base_keys} before, {keys} after"
    );
    assert!(
        bytes <= base_bytes + 16 * 1024,
        "bytes: {base_bytes} before, {bytes} after"
    );
}

/// Rows written by `insert_many` are marked dispatched in the transaction that writes them (the
/// push after `COMMIT` needs no second write). If that push never happens (the process dies
/// between commit and push), the durability sweep pushes them within the 10 s bound, and
/// each runs once.
#[tokio::test]
async fn bulk_jobs_committed_but_never_pushed_are_swept_and_run_once() {
    const JOBS: usize = 50;
    let app = TestApp::spawn().await;
    app.wait_until_ready().await;
    // The relay has seen Redis's epoch: what follows is the sweep's work, not a re-push after a
    // new epoch.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = app.get("/readyz").await;
        if status == 200 && body["redis"]["note"].is_null() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no epoch marker: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let services = app.services();
    let noop = lectern_core::jobs::Job::Noop(lectern_core::jobs::Noop {
        sleep_ms: 0,
        record: true,
        queue: lectern_core::jobs::Queue::Default,
        fail: None,
    });
    let mut tx = services.db.begin().await.unwrap();
    let queued = lectern_core::jobs::insert_many(&mut tx, &vec![noop; JOBS], None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let committed = std::time::Instant::now();
    // The crash: no dispatch follows the commit.
    assert_eq!(queued.len(), JOBS);
    assert!(queued.iter().all(|j| j.dispatched), "{queued:?}");
    let undispatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'noop' AND dispatched_at IS NULL",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(undispatched, 0, "the rows are written already marked");

    for job in &queued {
        let left = Duration::from_secs(10).saturating_sub(committed.elapsed());
        app.wait_for_job(&job.id.to_string(), "succeeded", left)
            .await;
    }
    assert!(
        committed.elapsed() <= Duration::from_secs(10),
        "took {:?}",
        committed.elapsed()
    );
    assert!(
        app.worker_log()
            .contains("dispatched but missing from Redis"),
        "the sweep pushed them"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (effects, attempts): (Vec<i32>, Vec<i32>) = sqlx::query_as::<_, (i32, i32)>(
        "SELECT l.effects, j.attempts FROM jobs j JOIN job_ledger l ON l.job_id = j.id
          WHERE j.kind = 'noop'",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
    .into_iter()
    .unzip();
    assert_eq!(effects.len(), JOBS, "one ledger row per job");
    assert!(effects.iter().all(|e| *e == 1), "{effects:?}");
    assert!(attempts.iter().all(|a| *a == 1), "{attempts:?}");
}

/// Successes are written after the handler has returned (its slot is already free). SIGTERM in
/// the middle of a burst writes every success handed over before the worker gives back its
/// unfinished jobs and exits: no job is left `running` (to wait for its lease), none that ran is
/// given back to run again, and none is counted twice.
#[tokio::test]
async fn sigterm_mid_burst_writes_every_pending_success_before_exit() {
    const JOBS: i64 = 5000;
    let mut app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: false,
        env: vec![("WORKER_CONCURRENCY_DEFAULT".into(), "64".into())],
    })
    .await;
    app.wait_until_ready().await;
    let (status, body) = app
        .post_as_admin("/api/v1/admin/jobs/noop", &json!({"count": JOBS}))
        .await;
    assert_eq!(status, 202, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = count_in_state(&app, "succeeded").await;
        if done >= 500 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", app.worker_log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.terminate_worker(Duration::from_secs(20));
    let (running, succeeded, given_back, counted_twice): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'running'),
                count(*) FILTER (WHERE state = 'succeeded'),
                count(*) FILTER (WHERE state = 'queued' AND attempts = 0 AND started_at IS NOT NULL),
                count(*) FILTER (WHERE attempts > 1)
           FROM jobs WHERE kind = 'noop'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    println!("{succeeded} succeeded, {given_back} given back at SIGTERM");
    assert_eq!(running, 0, "a job left running: its success was lost");
    assert!((500..=JOBS).contains(&succeeded), "{succeeded}");
    assert_eq!(counted_twice, 0);
    let log = app.worker_log();
    assert!(!log.contains("successes still unwritten"), "{log}");
    assert!(!log.contains("could not record the job's success"), "{log}");
    // A job given back at shutdown (its handler cut short) was never recorded as succeeded.
    let given_back_but_done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'noop' AND state = 'queued' AND finished_at IS NOT NULL",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(given_back_but_done, 0);
}

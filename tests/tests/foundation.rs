//! The foundation, end to end: real processes, PostgreSQL, Redis, S3 and SMTP on loopback.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use lectern_tests::{ADMIN_TOKEN, Options, TestApp, TestDb, run_to_end};
use serde_json::{Value, json};

#[tokio::test]
async fn readiness_checks_every_dependency_and_request_ids_are_echoed() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let ready = app.wait_until_ready().await;
    for dep in ["database", "redis", "storage"] {
        assert_eq!(ready[dep]["ok"], true, "{dep}: {ready}");
    }
    assert_eq!(ready["ready"], true);

    let (status, _, headers) = app.raw(app.http.get(format!("{}/healthz", app.url))).await;
    assert_eq!(status, 200);
    let generated = headers["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID is generated: {generated}");

    let (_, _, headers) = app
        .raw(
            app.http
                .get(format!("{}/healthz", app.url))
                .header("x-request-id", "trace-abc-123"),
        )
        .await;
    assert_eq!(headers["x-request-id"], "trace-abc-123");

    let (_, _, headers) = app
        .raw(
            app.http
                .get(format!("{}/healthz", app.url))
                .header("x-request-id", "bad id with spaces"),
        )
        .await;
    assert_ne!(headers["x-request-id"], "bad id with spaces");
}

#[tokio::test]
async fn a_mail_enqueued_through_the_api_arrives_over_smtp() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post_as_admin(
            "/api/v1/admin/email/test",
            &json!({"to": "ada@example.com", "note": "Hello <b>from</b> the test"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["job"]["kind"], "send_email");
    assert_eq!(body["job"]["state"], "queued");
    let id = body["job"]["id"].as_str().unwrap().to_owned();

    let job = app
        .wait_for_job(&id, "succeeded", Duration::from_secs(20))
        .await;
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["progress"], 100);
    assert!(job["finished_at"].is_string());

    let mails = app.smtp.wait_for(1, Duration::from_secs(5));
    assert_eq!(mails.len(), 1, "exactly one message");
    let mail = &mails[0];
    assert_eq!(mail.recipients, vec!["ada@example.com".to_owned()]);
    assert_eq!(mail.from, "no-reply@lectern.test");
    let data = mail.data_str();
    assert!(data.contains("multipart/alternative"), "{data}");
    let parsed = mail.parsed();
    assert_eq!(parsed.subject, "Lectern mail delivery test");
    assert!(
        parsed.text.contains("Hello <b>from</b> the test"),
        "{}",
        parsed.text
    );
    assert!(parsed.text.contains("mail delivery works"));
    assert!(
        parsed
            .html
            .contains("Hello &lt;b&gt;from&lt;&#x2f;b&gt; the test"),
        "escaped in HTML: {}",
        parsed.html
    );

    // The row is the durable record: enqueued after commit, one attempt, no error.
    let (state, attempts, errors): (String, i32, Value) =
        sqlx::query_as("SELECT state, attempts, errors FROM jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("succeeded", 1));
    assert_eq!(errors, json!([]));
}

#[tokio::test]
async fn smtp_refusals_are_classified_permanent_or_retryable() {
    let app = TestApp::spawn().await;
    let (_, bounced) = app
        .post_as_admin(
            "/api/v1/admin/email/test",
            &json!({"to": "bounce@example.com"}),
        )
        .await;
    let (_, deferred) = app
        .post_as_admin(
            "/api/v1/admin/email/test",
            &json!({"to": "tempfail@example.com"}),
        )
        .await;

    // 550: failed for good after one attempt, with the reason kept.
    let job = app
        .wait_for_job(
            bounced["job"]["id"].as_str().unwrap(),
            "failed",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(job["attempts"], 1);
    assert!(
        job["last_error"].as_str().unwrap().contains("refused"),
        "{job}"
    );

    // 451: retried later.
    let job = app
        .wait_for_job(
            deferred["job"]["id"].as_str().unwrap(),
            "retrying",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(job["attempts"], 1);
    assert!(
        job["last_error"].as_str().unwrap().contains("unavailable"),
        "{job}"
    );
    assert!(app.smtp.messages().is_empty());
}

#[tokio::test]
async fn a_committed_job_that_was_never_pushed_is_relayed() {
    let app = TestApp::spawn().await;
    // Simulate a process that died between COMMIT and the push to Redis.
    let job = lectern_core::jobs::Job::SendEmail(lectern_core::jobs::SendEmail {
        to: "relay@example.com".into(),
        template: lectern_core::mail::EmailTemplate::TestMessage,
        vars: Default::default(),
    });
    let mut tx = app.db.pool.begin().await.unwrap();
    let queued = lectern_core::jobs::insert(&mut tx, &job, None, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    app.wait_for_job(&queued.id.to_string(), "succeeded", Duration::from_secs(30))
        .await;
    let mails = app.smtp.wait_for(1, Duration::from_secs(5));
    assert_eq!(mails[0].recipients, vec!["relay@example.com".to_owned()]);
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_no_job() {
    let db = TestDb::create().await;
    let job =
        lectern_core::jobs::Job::RecomputeCourseStats(lectern_core::jobs::RecomputeCourseStats {
            course_id: uuid::Uuid::now_v7(),
        });
    let mut tx = db.pool.begin().await.unwrap();
    let queued = lectern_core::jobs::insert(&mut tx, &job, None, None)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        lectern_core::jobs::get(&db.pool, queued.id)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn bad_input_gets_the_error_model() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let url = |p: &str| format!("{}{p}", app.url);

    let (status, body, headers) = app
        .raw(
            app.http
                .post(url("/api/v1/admin/email/test"))
                .json(&json!({"to": "a@example.com"})),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert_eq!(headers["www-authenticate"], "Bearer");

    let (status, body, _) = app
        .raw(
            app.http
                .post(url("/api/v1/admin/email/test"))
                .bearer_auth("not-the-token-not-the-token-not-the-token")
                .json(&json!({"to": "a@example.com"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );

    let (status, body) = app
        .post_as_admin(
            "/api/v1/admin/email/test",
            &json!({"to": "not an address", "note": "x".repeat(501)}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    assert!(
        body["error"]["fields"]["to"][0]
            .as_str()
            .unwrap()
            .contains("valid email")
    );

    let (status, body, _) = app
        .raw(
            app.http
                .post(url("/api/v1/admin/email/test"))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body("{\"to\": "),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed_request")),
        "{body}"
    );

    let (status, body, _) = app
        .raw(
            app.http
                .post(url("/api/v1/admin/email/test"))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "text/plain")
                .body("to=a@example.com"),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    let (status, body, _) = app
        .raw(
            app.http
                .post(url("/api/v1/admin/email/test"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"to": "a@example.com", "pad": "x".repeat(70_000)})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    let (status, body) = app.get("/api/v1/no/such/route").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    let (status, body) = app
        .get_as_admin(&format!("/api/v1/jobs/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    let (status, body) = app.get_as_admin("/api/v1/jobs/not-a-uuid").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed_request"))
    );
}

#[tokio::test]
async fn the_openapi_document_lists_the_routes() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let (status, doc) = app.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/healthz",
        "/readyz",
        "/api/v1/jobs/{id}",
        "/api/v1/admin/email/test",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from {:?}",
            paths.keys()
        );
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
}

#[tokio::test]
async fn metrics_count_requests_and_jobs() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    for _ in 0..3 {
        app.get("/healthz").await;
    }
    app.get("/api/v1/no/such/route").await;
    app.post_as_admin("/api/v1/admin/email/test", &json!({"to": "m@example.com"}))
        .await;
    let text = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(
        value("lectern_http_requests_total{class=\"2xx\"}") >= 4.0,
        "{text}"
    );
    assert!(value("lectern_http_requests_total{class=\"4xx\"}") >= 1.0);
    assert_eq!(value("lectern_database_up"), 1.0);
    assert_eq!(
        value("lectern_jobs{queue=\"email\",state=\"queued\"}"),
        1.0,
        "no worker runs it"
    );
    assert!(text.contains("lectern_http_request_duration_seconds_bucket{le=\"+Inf\"}"));
}

#[tokio::test]
async fn invalid_configuration_exits_2_listing_every_problem() {
    let env: HashMap<String, String> = [
        ("PORT", "eighty"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("WORKER_CONCURRENCY_MEDIA", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for binary in ["lectern-api", "lectern-worker"] {
        let (status, output) = run_to_end(binary, &[], &env);
        assert_eq!(status.code(), Some(2), "{binary}: {output}");
        for name in [
            "PORT",
            "REDIS_URL",
            "WORKER_CONCURRENCY_MEDIA",
            "JWT_SECRET",
        ] {
            assert!(
                output.contains(name),
                "{binary} does not mention {name}: {output}"
            );
        }
    }
}

#[tokio::test]
async fn with_postgres_down_the_api_answers_503_and_stays_up() {
    let dead = format!(
        "postgres://postgres@127.0.0.1:{}/nowhere",
        lectern_tests::free_port()
    );
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![("DATABASE_URL".into(), dead)],
    })
    .await;
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["database"]["ok"], false);
    assert_eq!(ready["redis"]["ok"], true);

    let (status, body, headers) = app
        .raw(
            app.http
                .post(format!("{}/api/v1/admin/email/test", app.url))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"to": "a@example.com"})),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "service_unavailable");
    assert_eq!(headers["retry-after"], "5");

    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200, "the process is alive");
}

#[tokio::test]
async fn both_binaries_stop_cleanly_on_sigterm() {
    let mut app = TestApp::spawn().await;
    app.wait_until_ready().await;
    let worker = app.worker.as_mut().unwrap();
    // Let the worker register with Redis first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.signal("TERM");
    let status = worker
        .wait_exit(Duration::from_secs(15))
        .expect("worker exits");
    assert_eq!(status.code(), Some(0), "{}", worker.output());

    app.api.signal("TERM");
    let status = app
        .api
        .wait_exit(Duration::from_secs(15))
        .expect("api exits");
    assert_eq!(status.code(), Some(0), "{}", app.api.output());
}

#[tokio::test]
async fn migrate_creates_the_database_and_is_idempotent() {
    let name = format!("lectern_migrate_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}/{name}", lectern_tests::postgres_base());
    let env: HashMap<String, String> = [
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET", lectern_tests::JWT_SECRET),
        // The default (embedded) storage needs a key pair of its own.
        ("S3_ACCESS_KEY_ID", lectern_tests::S3_KEY),
        ("S3_SECRET_ACCESS_KEY", lectern_tests::S3_SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for _ in 0..2 {
        let (status, output) = run_to_end("lectern-api", &["migrate"], &env);
        assert!(status.success(), "{output}");
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'jobs'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 1);
    pool.close().await;
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", lectern_tests::postgres_base()))
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

/// A private Redis on a random port, so the test can stop and restart it.
fn start_redis(port: u16) -> std::process::Child {
    std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server on PATH")
}

#[tokio::test]
async fn a_redis_outage_delays_jobs_but_loses_none() {
    let port = lectern_tests::free_port();
    let mut redis = start_redis(port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let app = TestApp::spawn_with(Options {
        no_worker: false,
        env: vec![("REDIS_URL".into(), format!("redis://127.0.0.1:{port}"))],
    })
    .await;
    app.wait_until_ready().await;

    redis.kill().unwrap();
    redis.wait().unwrap();
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(
        (status, ready["redis"]["ok"].as_bool()),
        (503, Some(false)),
        "{ready}"
    );

    // The job is committed while Redis is down: the request still succeeds.
    let (status, body) = app
        .post_as_admin(
            "/api/v1/admin/email/test",
            &json!({"to": "outage@example.com"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["job"]["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(app.smtp.messages().is_empty());

    // Redis comes back (empty: nothing survived); the relay pushes the job and the worker runs it.
    let _redis = KillOnDrop(start_redis(port));
    app.wait_for_job(&id, "succeeded", Duration::from_secs(60))
        .await;
    assert_eq!(app.smtp.wait_for(1, Duration::from_secs(5)).len(), 1);
    // The API's connection re-establishes itself too.
    app.wait_until_ready().await;
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

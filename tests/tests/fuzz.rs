//! Hostile input, end to end: strings with NUL or stray control characters are refused with a 422
//! wherever they arrive, and schemathesis fuzzes every operation of `/api/v1/openapi.json` with a
//! fixed seed and time budget, expecting no server error and no answer the document does not
//! describe (status, content type, body schema).
//!
//! `CHECKS` lists the schemathesis checks every pass applies, and `passes` the identities the API
//! is exercised with.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use lectern_tests::{ADMIN_TOKEN, Options, TestApp};
use serde_json::{Value, json};

/// The schemathesis checks every pass runs: no 5xx, and every answer is one the document lists,
/// with its content type and its schema.
const CHECKS: &[&str] = &[
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
];

/// Fixed, so a failure reproduces with the same requests.
const SEED: u64 = 1313;

/// Operations a pass must not call: they end (or lock) the very session the pass runs with:
/// logout, revoking a session (the pass's own is listed by `GET /auth/sessions`), deleting the
/// account, a password reset (ends every session) or change (ends the others, and wrong current
/// passwords lock password checks).
const SESSION_ENDING: &str = "^(POST /api/v1/auth/logout|DELETE /api/v1/auth/sessions/.*|DELETE /api/v1/me|POST /api/v1/auth/password-reset/confirm|POST /api/v1/auth/password)$";

/// One schemathesis run: who calls, which operations, for how long.
struct Pass {
    name: &'static str,
    token: String,
    include_path_regex: Option<&'static str>,
    max_time_secs: u64,
}

/// Runs one pass; returns its exit status and its report (stdout and stderr).
async fn run(app: &TestApp, pass: &Pass) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(lectern_tests::venv_bin("st"));
    cmd.arg("run")
        .arg(format!("{}/api/v1/openapi.json", app.url))
        .args(["--checks", &CHECKS.join(",")])
        .args(["--seed", &SEED.to_string()])
        .args(["--max-time", &pass.max_time_secs.to_string()])
        // One worker: hypothesis' generation is not thread-safe (parallel workers made it fail
        // with internal "AST constructor recursion depth" errors).
        .args(["--workers", "1"])
        .args(["--request-timeout", "20"])
        .args(["--suppress-health-check", "all"])
        .args(["--exclude-name-regex", SESSION_ENDING])
        .args(["-H", &format!("Authorization: Bearer {}", pass.token)])
        .args(["--report-dir", &app.dir.join("st").display().to_string()])
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .current_dir(&app.dir)
        .kill_on_drop(true);
    if let Some(regex) = pass.include_path_regex {
        cmd.args(["--include-path-regex", regex]);
    }
    let out = tokio::time::timeout(Duration::from_secs(pass.max_time_secs + 120), cmd.output())
        .await
        .expect("schemathesis finishes within its budget")
        .expect("schemathesis runs");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), report)
}

/// The API's own log lines for responses with a 5xx status, after its first `skip` lines (start-up
/// probes of `/readyz` may answer 503 before the bucket exists).
fn server_errors_in_log(app: &TestApp, skip: usize) -> Vec<String> {
    app.api
        .output()
        .lines()
        .skip(skip)
        .filter(|line| line.contains("request failed"))
        .map(str::to_owned)
        .collect()
}

async fn verified_instructor(app: &TestApp) -> String {
    let body = app.register("fuzzer@example.com", "instructor").await;
    let id: uuid::Uuid = body["user"]["id"].as_str().unwrap().parse().unwrap();
    sqlx::query("UPDATE users SET email_verified_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let app = TestApp::spawn_with(Options {
        // The API alone: jobs the requests queue wait in the table.
        no_worker: true,
        // The fuzzer is one very busy client: rate limits would only shrink what it covers.
        env: vec![("RATE_LIMITS".into(), "off".into())],
    })
    .await;
    app.wait_until_ready().await;
    let user = verified_instructor(&app).await;
    // Something to find: a published course of the fuzzing instructor.
    let (status, course) = app
        .call(
            "POST",
            "/api/v1/courses",
            Some(&user),
            Some(&json!({"title": "Fuzzing 101", "price": "0"})),
        )
        .await;
    assert_eq!(status, 201, "{course}");

    let passes = [
        Pass {
            name: "a verified instructor, every operation",
            token: user.clone(),
            include_path_regex: None,
            max_time_secs: 100,
        },
        Pass {
            name: "the operator token, admin operations",
            token: ADMIN_TOKEN.to_owned(),
            include_path_regex: Some("/admin/"),
            max_time_secs: 40,
        },
    ];
    let log_start = app.api.output().lines().count();
    let mut failures = Vec::new();
    for pass in &passes {
        let (code, report) = run(&app, pass).await;
        if code != Some(0) {
            failures.push(format!("=== {} (exit {code:?}) ===\n{report}", pass.name));
        }
    }
    let logged = server_errors_in_log(&app, log_start);
    // The pass's session outlived the run: nothing it called signed it out.
    let (status, me) = app.call("GET", "/api/v1/me", Some(&user), None).await;
    assert_eq!(status, 200, "the fuzzing session ended mid-run: {me}");
    assert!(
        failures.is_empty() && logged.is_empty(),
        "schemathesis found problems:\n{}\n--- 5xx in the API log ---\n{}",
        failures.join("\n"),
        logged.join("\n")
    );
}

fn fields(body: &Value) -> Vec<String> {
    body["error"]["fields"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn nul_and_control_characters_are_refused_with_422_wherever_they_arrive() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let user = verified_instructor(&app).await;

    // A NUL in a login email (a 500 before: PostgreSQL cannot store NUL in text).
    let (status, body) = app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(&json!({"email": "fuzzer\u{0}@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    assert_eq!(fields(&body), ["email"]);

    // In a course title, and deep in a body; a bell in a short description.
    let (status, body) = app
        .call(
            "POST",
            "/api/v1/courses",
            Some(&user),
            Some(&json!({"title": "Intro\u{0}", "tags": ["ok", "b\u{0}d"], "short_description": "ding\u{7}"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(fields(&body), ["short_description", "tags[1]", "title"]);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM courses")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);

    // In a query parameter and in a path segment.
    let (status, body) = app.get("/api/v1/courses?q=rust%00").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(fields(&body), ["q"]);
    let (status, body) = app.get("/api/v1/instructor/overview?tz=UTC%00").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(fields(&body), ["tz"]);
    let (status, body) = app
        .call("GET", "/api/v1/courses/intro%00", Some(&user), None)
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(fields(&body), ["path"]);

    // Line breaks and tabs are text, not control: a multi-line description is fine.
    let (status, body) = app
        .call(
            "POST",
            "/api/v1/courses",
            Some(&user),
            Some(&json!({"title": "Intro", "description": "Line one\r\nLine two\n\tindented"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

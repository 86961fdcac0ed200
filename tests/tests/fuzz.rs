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
    cmd.arg("--config-file")
        .arg(app.dir.join("schemathesis.toml"))
        .arg("run")
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

async fn created(app: &TestApp, token: &str, path: &str, body: Value) -> Value {
    let (status, out) = app.call("POST", path, Some(token), Some(&body)).await;
    assert_eq!(status, 201, "{path}: {out}");
    out
}

/// A direct upload of a small PNG (its processing job waits: the fuzz run has no worker).
async fn png_media(app: &TestApp, token: &str, course: &str) -> Value {
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(32, 24, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 10) as u8, 128])
    }))
    .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
    .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("course_id", course.to_owned())
        .part(
            "file",
            reqwest::multipart::Part::bytes(png)
                .file_name("cover.png")
                .mime_str("image/png")
                .unwrap(),
        );
    let (status, out, _) = app
        .raw(
            app.http
                .post(format!("{}/api/v1/media", app.url))
                .bearer_auth(token)
                .multipart(form),
        )
        .await;
    assert_eq!(status, 202, "{out}");
    out
}

/// The fuzzing instructor's course (with a section), media and job, another instructor to
/// follow, and doomed copies for the `DELETE` operations so the others keep theirs; returns the
/// schemathesis configuration that hands their ids to the operations' path parameters, and the
/// course's id.
async fn fixtures(app: &TestApp, token: &str) -> (String, String) {
    let course = created(
        app,
        token,
        "/api/v1/courses",
        json!({"title": "Fuzzing 101", "price": "0"}),
    )
    .await;
    let doomed = created(
        app,
        token,
        "/api/v1/courses",
        json!({"title": "Doomed", "price": "0"}),
    )
    .await;
    let course_id = course["id"].as_str().unwrap();
    let section = course["sections"][0]["id"].as_str().unwrap();
    let doomed_section = created(
        app,
        token,
        &format!("/api/v1/courses/{course_id}/sections"),
        json!({"title": "Doomed"}),
    )
    .await;
    let media = png_media(app, token, course_id).await;
    let doomed_media = png_media(app, token, course_id).await;
    let other = app.register("followed@example.com", "instructor").await;
    let student = app.register("student@example.com", "student").await;
    let id = |v: &Value, at: &str| v.pointer(at).and_then(Value::as_str).unwrap().to_owned();
    let operation = |filter: &str, params: &[(&str, String)]| {
        let params: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("\"path.{k}\" = \"{v}\""))
            .collect();
        format!(
            "[[operations]]\n{filter}\nparameters = {{ {} }}\n\n",
            params.join(", ")
        )
    };
    let keep = "exclude-method = \"DELETE\"";
    let config = [
        operation(
            &format!(
                "include-path-regex = '^/api/v1/(courses|instructor/courses)/\\{{id\\}}'\n{keep}"
            ),
            &[("id", course_id.to_owned())],
        ),
        operation(
            "include-name = \"DELETE /api/v1/courses/{id}\"",
            &[("id", id(&doomed, "/id"))],
        ),
        operation(
            "include-name = \"DELETE /api/v1/courses/{id}/grants/{user_id}\"",
            &[
                ("id", course_id.to_owned()),
                ("user_id", id(&student, "/user/id")),
            ],
        ),
        operation(
            &format!("include-path-regex = '^/api/v1/sections/'\n{keep}"),
            &[("id", section.to_owned())],
        ),
        operation(
            "include-name = \"DELETE /api/v1/sections/{id}\"",
            &[("id", id(&doomed_section, "/id"))],
        ),
        operation(
            &format!("include-path-regex = '^/api/v1/media/(uploads/)?\\{{id\\}}'\n{keep}"),
            &[("id", id(&media, "/media/id"))],
        ),
        operation(
            "include-name = \"DELETE /api/v1/media/{id}\"",
            &[("id", id(&doomed_media, "/media/id"))],
        ),
        operation(
            "include-path-regex = '^/api/v1/progress/videos/'",
            &[("media_id", id(&media, "/media/id"))],
        ),
        operation(
            "include-path-regex = '^/api/v1/(admin/)?jobs/\\{id\\}'",
            &[("id", id(&media, "/job/id"))],
        ),
        operation(
            "include-path-regex = '^/api/v1/users/\\{id\\}'",
            &[("id", id(&other, "/user/id"))],
        ),
    ]
    .concat();
    (config, course_id.to_owned())
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
    // Something to find: the fuzzing instructor's objects, whose ids the operations with a path
    // id get (random ids only ever reach the 404), so their answers' schemas are checked too.
    let (config, course) = fixtures(&app, &user).await;
    std::fs::write(app.dir.join("schemathesis.toml"), config).unwrap();

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
    // The fixtures' ids reached the handlers (sections were added to the course).
    let sections: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sections WHERE course_id = $1::uuid")
            .bind(&course)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(sections > 2, "no fuzzed request reached the fixture course");
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

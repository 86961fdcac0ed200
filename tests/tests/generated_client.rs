//! The OpenAPI document as clients use it: its shape checked route by route, and a Python client
//! generated from it by openapi-python-client (a mainstream generator, pinned in
//! `scripts/bootstrap.sh`) running a user story (`tests/client/story.py`): register, verify the
//! email from the mail, create a course, upload, publish, enroll.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lectern_tests::{TestApp, venv_bin};
use serde_json::Value;

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

async fn document(app: &TestApp) -> Value {
    let (status, doc) = app.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    doc
}

/// Every operation of the document: (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(*method) {
                out.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    out
}

fn schema_ref(response: &Value) -> Option<&str> {
    response["content"]["application/json"]["schema"]["$ref"].as_str()
}

#[tokio::test]
async fn the_document_lists_every_answer_with_its_schema() {
    let app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let doc = document(&app).await;
    let ops = operations(&doc);
    assert!(ops.len() > 60, "{} operations", ops.len());
    let mut ids = HashSet::new();
    for (method, path, op) in &ops {
        let name = format!("{method} {path}");
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(
            ids.insert(id.to_owned()),
            "{name}: operationId {id} is not unique"
        );
        let responses = op["responses"].as_object().unwrap();
        // What the framework answers on every route.
        for status in ["422", "500", "503"] {
            assert!(
                responses.contains_key(status),
                "{name} does not list {status}"
            );
        }
        assert!(
            responses["503"]["headers"]["Retry-After"].is_object(),
            "{name}: 503 without Retry-After"
        );
        if path.contains('{') {
            assert!(
                responses.contains_key("404"),
                "{name} has a path id but no 404"
            );
            assert!(
                responses.contains_key("400"),
                "{name} has a path id but no 400"
            );
        }
        let secured = op["security"].as_array().is_some_and(|s| {
            s.iter()
                .any(|r| r.as_object().is_some_and(|r| !r.is_empty()))
        });
        if secured {
            assert!(
                responses.contains_key("401"),
                "{name} needs a token but has no 401"
            );
        }
        if op["requestBody"]["content"]["application/json"].is_object() {
            for status in ["400", "413", "415"] {
                assert!(
                    responses.contains_key(status),
                    "{name} takes JSON but has no {status}"
                );
            }
        }
        for (status, response) in responses {
            let code: u16 = status.parse().unwrap();
            if code >= 400 && path.starts_with("/api/v1/") {
                assert_eq!(
                    schema_ref(response),
                    Some("#/components/schemas/ErrorBody"),
                    "{name}: {status} is not the error body"
                );
            }
            if (200..300).contains(&code) && code != 204 {
                assert!(
                    response["content"]
                        .as_object()
                        .is_some_and(|c| !c.is_empty()),
                    "{name}: {status} has no documented body"
                );
            }
        }
    }

    // Lists are pages: every schema with `items` has `next_cursor`, both required.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for (name, schema) in schemas {
        if schema["properties"]["items"]["type"] == "array" {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(
                required.contains(&"items") && required.contains(&"next_cursor"),
                "{name} is a list without next_cursor: {schema}"
            );
        }
    }
    for (method, path, op) in &ops {
        if method == "GET" {
            let ok = &op["responses"]["200"];
            assert_ne!(
                ok["content"]["application/json"]["schema"]["type"], "array",
                "GET {path} answers a bare array"
            );
        }
    }
    // Page items are shared schemas, not copies.
    assert_eq!(
        schemas["Page_CourseCard"]["properties"]["items"]["items"]["$ref"],
        "#/components/schemas/CourseCard"
    );

    // The WebSocket: its token, its upgrade, its events and close codes.
    let ws = &doc["paths"]["/api/v1/ws"]["get"];
    assert!(ws["responses"]["101"].is_object(), "{ws}");
    assert!(
        ws["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "token" && p["in"] == "query"),
        "{ws}"
    );
    let text = ws["description"].as_str().unwrap_or_default();
    for needle in ["4401", "4429", "ready", "notification", "media.progress"] {
        assert!(
            text.contains(needle),
            "/ws does not describe {needle}: {text}"
        );
    }

    // Completing an upload: both answers, each with its schema.
    let complete = &doc["paths"]["/api/v1/media/uploads/{id}/complete"]["post"]["responses"];
    for status in ["200", "202"] {
        assert_eq!(
            complete[status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/UploadCompleted",
            "{complete}"
        );
    }

    // What the document says is what the API does: a 401 and a 415 with the error body.
    let (status, body) = app.get("/api/v1/me").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthenticated");
    let (status, body, headers) = app
        .raw(
            app.http
                .post(format!("{}/api/v1/auth/login", app.url))
                .header("Content-Type", "text/plain")
                .body("hello"),
        )
        .await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    assert_eq!(headers["content-type"], "application/json");
    // Not a WebSocket handshake: the documented 400 with the error body, not plain text.
    let (status, body) = app.get("/api/v1/ws?token=nope").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "malformed_request");
}

/// Copies the messages the test SMTP server received into `dir` as `NNNN.eml`, as a mail reader
/// finds them; `written` counts those already copied.
fn copy_mail(app: &TestApp, dir: &Path, written: &mut usize) {
    let all = app.smtp.messages();
    for (i, mail) in all.iter().enumerate().skip(*written) {
        std::fs::write(dir.join(format!("{i:04}.eml")), &mail.data).unwrap();
    }
    *written = all.len();
}

#[tokio::test]
async fn a_generated_python_client_runs_the_user_story() {
    let app = TestApp::spawn().await;
    app.wait_until_ready().await;
    let dir = lectern_tests::scratch_dir("generated-client");

    // The document, as a generator fetches it, and the client generated from it.
    let doc = document(&app).await;
    let spec = dir.join("openapi.json");
    std::fs::write(&spec, serde_json::to_vec(&doc).unwrap()).unwrap();
    let client_dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("client");
    let generator = venv_bin("openapi-python-client");
    let path = format!(
        "{}:{}",
        generator.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new(&generator)
        .arg("generate")
        .arg("--path")
        .arg(&spec)
        .arg("--output-path")
        .arg(dir.join("lectern_client"))
        .args(["--meta", "none"])
        .arg("--config")
        .arg(client_dir.join("generator.yaml"))
        .env("PATH", &path)
        .output()
        .await
        .expect("openapi-python-client runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the generator failed:\n{report}");
    // A warning means an operation or a response was left out of the client.
    assert!(
        !report.to_lowercase().contains("warning"),
        "the generator left something out:\n{report}"
    );

    // A small video for the lessons.
    let video = dir.join("lesson.mp4");
    lectern_tests::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x120:rate=15:duration=1",
        "-pix_fmt",
        "yuv420p",
        video.to_str().unwrap(),
    ]);
    let mail_dir = dir.join("mail");
    std::fs::create_dir_all(&mail_dir).unwrap();

    let story = tokio::process::Command::new(venv_bin("python"))
        .arg(client_dir.join("story.py"))
        .env("PYTHONPATH", &dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("LECTERN_URL", &app.url)
        .env("LECTERN_MAIL_DIR", &mail_dir)
        .env("LECTERN_VIDEO", &video)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs")
        .wait_with_output();
    tokio::pin!(story);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut written = 0;
    let out = loop {
        // The mail folder follows the SMTP server while the story runs.
        copy_mail(&app, &mail_dir, &mut written);
        tokio::select! {
            out = &mut story => break out.expect("the story's output"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                assert!(tokio::time::Instant::now() < deadline, "the story takes over 5 minutes");
            }
        }
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the story failed:\n{report}\n--- worker log ---\n{}",
        app.worker_log()
    );
    assert!(report.contains("story: done"), "{report}");

    // What the story did, seen from the database.
    let enrolled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM enrollments e JOIN users u ON u.id = e.user_id
          WHERE u.email = 'grace@example.com'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(enrolled, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

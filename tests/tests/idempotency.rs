//! `Idempotency-Key` on the creating POSTs, end to end: a retry replays the first response, a key
//! reused with another body is refused, concurrent requests with one key act once, keys are per
//! caller and expire, errors are not kept, and requests without the header are unchanged.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use lectern_tests::TestApp;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use uuid::Uuid;

/// `POST path` as `token` with `body`, and `Idempotency-Key: key` when given.
async fn post(
    app: &TestApp,
    path: &str,
    token: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value, HeaderMap) {
    let mut req = app
        .http
        .post(format!("{}{path}", app.url))
        .bearer_auth(token);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    app.raw(req).await
}

fn replayed(headers: &HeaderMap) -> bool {
    headers
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_replays_the_first_response_and_another_body_is_refused() {
    let app = TestApp::spawn().await;
    let (t, _) = app.verified_instructor("ida@example.com").await;
    let body = json!({"title": "Knots and Splices"});

    let (s1, first, h1) = post(&app, "/api/v1/courses", &t, Some("k-1"), Some(&body)).await;
    assert_eq!(s1, 201, "{first}");
    assert!(!replayed(&h1));
    let (s2, second, h2) = post(&app, "/api/v1/courses", &t, Some("k-1"), Some(&body)).await;
    assert_eq!(
        (s2, &second),
        (201, &first),
        "the same status and body, ids included"
    );
    assert!(replayed(&h2), "{h2:?}");
    assert_eq!(
        h2.get("content-type").unwrap(),
        h1.get("content-type").unwrap()
    );
    assert_eq!(count(&app, "SELECT count(*) FROM courses").await, 1);
    // The draft's quoted form names the same key.
    let (s3, third, h3) = post(&app, "/api/v1/courses", &t, Some("\"k-1\""), Some(&body)).await;
    assert_eq!((s3, &third, replayed(&h3)), (201, &first, true));

    // The same key with another body: 422, nothing created, and the first answer still replays.
    let (status, refused, _) = post(
        &app,
        "/api/v1/courses",
        &t,
        Some("k-1"),
        Some(&json!({"title": "Something Else"})),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "idempotency_key_reused");
    // ...or with another path.
    let course = first["id"].as_str().unwrap();
    let (status, refused, _) = post(
        &app,
        &format!("/api/v1/courses/{course}/sections"),
        &t,
        Some("k-1"),
        Some(&body),
    )
    .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert_eq!(count(&app, "SELECT count(*) FROM courses").await, 1);

    // Sections: one per key.
    let section = json!({"title": "Bowline"});
    let path = format!("/api/v1/courses/{course}/sections");
    let (s1, a, _) = post(&app, &path, &t, Some("sec-1"), Some(&section)).await;
    let (s2, b, h) = post(&app, &path, &t, Some("sec-1"), Some(&section)).await;
    assert_eq!((s1, s2, replayed(&h)), (201, 201, true), "{a} {b}");
    assert_eq!(a, b);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM sections WHERE title = 'Bowline'"
        )
        .await,
        1
    );

    // Without the header, requests behave as before: two posts, two courses.
    for _ in 0..2 {
        let (status, _, h) = post(&app, "/api/v1/courses", &t, None, Some(&body)).await;
        assert_eq!(status, 201);
        assert!(!replayed(&h));
    }
    assert_eq!(count(&app, "SELECT count(*) FROM courses").await, 3);
}

#[tokio::test]
async fn keys_belong_to_their_caller_expire_and_are_not_kept_for_errors() {
    let app = TestApp::spawn().await;
    let (ann, _) = app.verified_instructor("ann@example.com").await;
    let (bob, _) = app.verified_instructor("bob@example.com").await;
    let body = json!({"title": "Sailing"});

    // Another user's request with the same key string is their own.
    let (_, a, _) = post(&app, "/api/v1/courses", &ann, Some("shared"), Some(&body)).await;
    let (status, b, h) = post(&app, "/api/v1/courses", &bob, Some("shared"), Some(&body)).await;
    assert_eq!(status, 201, "{b}");
    assert!(!replayed(&h));
    assert_ne!(a["id"], b["id"]);
    assert_eq!(count(&app, "SELECT count(*) FROM courses").await, 2);

    // After 24 hours the key starts afresh.
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE idem_key = 'shared'",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let (status, again, h) = post(&app, "/api/v1/courses", &ann, Some("shared"), Some(&body)).await;
    assert_eq!(status, 201, "{again}");
    assert!(!replayed(&h));
    assert_ne!(again["id"], a["id"]);
    assert_eq!(count(&app, "SELECT count(*) FROM courses").await, 3);
    // The sweep removes expired rows.
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let swept = lectern_core::idempotency::sweep_expired(&app.services())
        .await
        .unwrap();
    assert_eq!(swept, 2);
    assert_eq!(
        count(&app, "SELECT count(*) FROM idempotency_keys").await,
        0
    );

    // An error is not kept: the same key with a corrected body runs.
    let (status, bad, _) = post(
        &app,
        "/api/v1/courses",
        &ann,
        Some("fix-me"),
        Some(&json!({"title": ""})),
    )
    .await;
    assert_eq!(status, 422, "{bad}");
    assert_eq!(bad["error"]["code"], "validation_failed");
    let (status, fixed, h) = post(
        &app,
        "/api/v1/courses",
        &ann,
        Some("fix-me"),
        Some(&json!({"title": "Fixed"})),
    )
    .await;
    assert_eq!((status, replayed(&h)), (201, false), "{fixed}");

    // Keys too long, empty, not ASCII, badly quoted or sent twice: 422, nothing stored or run.
    let before = count(&app, "SELECT count(*) FROM courses").await;
    for key in [
        "k".repeat(256),
        String::new(),
        "\"open".into(),
        "caf\u{e9}".into(),
    ] {
        let req = app
            .http
            .post(format!("{}/api/v1/courses", app.url))
            .bearer_auth(&ann)
            .header("Idempotency-Key", key.as_bytes())
            .json(&body);
        let (status, refused, _) = app.raw(req).await;
        assert_eq!(status, 422, "{key:?}: {refused}");
        assert!(
            refused["error"]["fields"]["Idempotency-Key"].is_array(),
            "{refused}"
        );
    }
    let req = app
        .http
        .post(format!("{}/api/v1/courses", app.url))
        .bearer_auth(&ann)
        .header("Idempotency-Key", "one")
        .header("Idempotency-Key", "two")
        .json(&body);
    assert_eq!(app.raw(req).await.0, 422);
    assert!(
        post(
            &app,
            "/api/v1/courses",
            &ann,
            Some(&"k".repeat(255)),
            Some(&body)
        )
        .await
        .0 == 201
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM courses").await,
        before + 1
    );

    // No credential: the route's own 401, and no key is stored for anyone.
    let keys = count(&app, "SELECT count(*) FROM idempotency_keys").await;
    let (status, _, _) = post(
        &app,
        "/api/v1/courses",
        "not-a-token",
        Some("anon"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        count(&app, "SELECT count(*) FROM idempotency_keys").await,
        keys
    );
}

#[tokio::test]
async fn concurrent_requests_with_one_key_act_once() {
    let app = TestApp::spawn().await;
    app.wait_until_ready().await;
    let (t, _) = app.verified_instructor("cc@example.com").await;

    let body = json!({"title": "Racing"});
    let (a, b) = tokio::join!(
        post(&app, "/api/v1/courses", &t, Some("race"), Some(&body)),
        post(&app, "/api/v1/courses", &t, Some("race"), Some(&body)),
    );
    assert_eq!((a.0, b.0), (201, 201), "{} {}", a.1, b.1);
    assert_eq!(a.1["id"], b.1["id"]);
    assert_eq!(
        [replayed(&a.2), replayed(&b.2)]
            .iter()
            .filter(|r| **r)
            .count(),
        1,
        "one ran, the other replayed it"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM courses").await, 1);

    // Uploads: eight at once with one key start one upload, all answered with its URL.
    let upload = json!({"file_name": "talk.mp4", "file_size": 1_000_000, "mime_type": "video/mp4"});
    let requests =
        (0..8).map(|_| post(&app, "/api/v1/media/uploads", &t, Some("up"), Some(&upload)));
    let answers = futures::future::join_all(requests).await;
    assert!(
        answers.iter().all(|a| a.0 == 201),
        "{:?}",
        answers.iter().map(|a| &a.1).collect::<Vec<_>>()
    );
    assert!(answers.iter().all(|a| a.1 == answers[0].1));
    assert_eq!(answers.iter().filter(|a| !replayed(&a.2)).count(), 1);
    assert_eq!(count(&app, "SELECT count(*) FROM media").await, 1);

    // Without a key, two uploads.
    let (x, y) = tokio::join!(
        post(&app, "/api/v1/media/uploads", &t, None, Some(&upload)),
        post(&app, "/api/v1/media/uploads", &t, None, Some(&upload)),
    );
    assert_eq!((x.0, y.0), (201, 201));
    assert_eq!(count(&app, "SELECT count(*) FROM media").await, 3);
}

#[tokio::test]
async fn enrollments_reviews_and_exports_replay_too() {
    let app = TestApp::spawn().await;
    let (_, teacher) = app.verified_instructor("teach@example.com").await;
    let student = app.register("stu@example.com", "student").await;
    let s = student["access_token"].as_str().unwrap().to_owned();
    let course = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO courses (id, instructor_id, title, slug, price, status, published_at)
         VALUES ($1, $2::uuid, 'Free Knots', $3, 0, 'published', now())",
    )
    .bind(course)
    .bind(&teacher)
    .bind(format!("free-knots-{}", course.simple()))
    .execute(&app.db.pool)
    .await
    .unwrap();

    // Enroll: the retry replays the 201 (without a key a second enroll answers 200).
    let path = format!("/api/v1/courses/{course}/enroll");
    let (s1, first, _) = post(&app, &path, &s, Some("enroll-1"), None).await;
    assert_eq!(s1, 201, "{first}");
    let (s2, again, h) = post(&app, &path, &s, Some("enroll-1"), None).await;
    assert_eq!((s2, &again, replayed(&h)), (201, &first, true));
    assert_eq!(post(&app, &path, &s, None, None).await.0, 200);
    assert_eq!(count(&app, "SELECT count(*) FROM enrollments").await, 1);

    // Review: the retry replays.
    let path = format!("/api/v1/courses/{course}/reviews");
    let review = json!({"rating": 5, "body": "Tied my shoes at last"});
    let (s1, first, _) = post(&app, &path, &s, Some("rev-1"), Some(&review)).await;
    assert_eq!(s1, 201, "{first}");
    let (s2, again, h) = post(&app, &path, &s, Some("rev-1"), Some(&review)).await;
    assert_eq!((s2, &again, replayed(&h)), (s1, &first, true));

    // Export: one job for one key.
    let (s1, first, _) = post(&app, "/api/v1/me/export", &s, Some("exp-1"), None).await;
    assert_eq!(s1, 202, "{first}");
    let (s2, again, h) = post(&app, "/api/v1/me/export", &s, Some("exp-1"), None).await;
    assert_eq!((s2, &again, replayed(&h)), (202, &first, true));
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM jobs WHERE kind = 'export_user_data'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn the_openapi_document_lists_the_header_on_creating_posts() {
    let app = TestApp::spawn().await;
    let (status, doc) = app.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let params = |path: &str| -> Vec<String> {
        doc["paths"][path]["post"]["parameters"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter(|p| p["in"] == "header")
                    .map(|p| p["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for path in [
        "/api/v1/courses",
        "/api/v1/courses/{id}/sections",
        "/api/v1/courses/{id}/enroll",
        "/api/v1/courses/{id}/reviews",
        "/api/v1/media/uploads",
        "/api/v1/me/export",
    ] {
        assert_eq!(params(path), ["Idempotency-Key"], "{path}");
        let responses = &doc["paths"][path]["post"]["responses"];
        assert!(
            responses["409"].is_object() && responses["422"].is_object(),
            "{path}"
        );
    }
    assert!(params("/api/v1/media/uploads/{id}/complete").is_empty());
}

#[tokio::test]
async fn a_key_held_past_the_wait_answers_409_and_a_dead_claim_is_taken_over() {
    let app = TestApp::spawn().await;
    let (t, user) = app.verified_instructor("slow@example.com").await;
    let body = json!({"title": "Slow"});
    let bytes = serde_json::to_vec(&body).unwrap();
    // A request with this key and body is running (its row holds the key, no response yet).
    let print = lectern_core::idempotency::fingerprint("POST", "/api/v1/courses", &bytes);
    sqlx::query(
        "INSERT INTO idempotency_keys (owner, idem_key, fingerprint, method, path, claim, locked_until)
         VALUES ('user:' || $1, 'slow', $2, 'POST', '/api/v1/courses', gen_random_uuid(), now() + interval '1 minute')",
    )
    .bind(&user)
    .bind(&print)
    .execute(&app.db.pool)
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let (status, busy, _) = post(&app, "/api/v1/courses", &t, Some("slow"), Some(&body)).await;
    assert_eq!(status, 409, "{busy}");
    assert_eq!(busy["error"]["code"], "idempotency_key_in_flight");
    assert!(
        started.elapsed() >= lectern_core::idempotency::WAIT,
        "it waited first"
    );
    // Another body with the key in use is still a reuse.
    let (status, _, _) = post(
        &app,
        "/api/v1/courses",
        &t,
        Some("slow"),
        Some(&json!({"title": "Other"})),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(count(&app, "SELECT count(*) FROM courses").await, 0);

    // Its process died: once the lease ends, a retry takes the key over and runs.
    sqlx::query("UPDATE idempotency_keys SET locked_until = now() - interval '1 second'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let (status, created, h) = post(&app, "/api/v1/courses", &t, Some("slow"), Some(&body)).await;
    assert_eq!((status, replayed(&h)), (201, false), "{created}");
    let (status, again, h) = post(&app, "/api/v1/courses", &t, Some("slow"), Some(&body)).await;
    assert_eq!((status, &again, replayed(&h)), (201, &created, true));
    assert_eq!(count(&app, "SELECT count(*) FROM courses").await, 1);
}

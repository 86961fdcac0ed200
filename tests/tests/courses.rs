//! Courses and the catalogue, end to end: authoring, sections, publishing rules, follower
//! fan-out, search (relevance, typos, filters, pages, index use), reviews, enrollment, statistics
//! and recommendations.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lectern_tests::TestApp;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

fn token(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_owned()
}

fn user_id(body: &Value) -> Uuid {
    body["user"]["id"].as_str().unwrap().parse().unwrap()
}

async fn verify(pool: &PgPool, id: Uuid) {
    sqlx::query("UPDATE users SET email_verified_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

/// Adds media rows as the media pipeline leaves them once processing has finished.
async fn add_ready_media(
    pool: &PgPool,
    owner: Uuid,
    course: Uuid,
    section: Option<Uuid>,
    kind: &str,
) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO media (id, owner_id, course_id, section_id, kind, state, title, duration_secs)
         VALUES ($1, $2, $3, $4, $5, 'ready', 'clip', 60)",
    )
    .bind(id)
    .bind(owner)
    .bind(course)
    .bind(section)
    .bind(kind)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// A published course written straight into the table (for catalogue fixtures).
#[allow(clippy::too_many_arguments)]
async fn seed_published(
    pool: &PgPool,
    instructor: Uuid,
    title: &str,
    short: &str,
    description: &str,
    tags: &[&str],
    price: &str,
    extra: &str,
) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO courses (id, instructor_id, title, slug, short_description, description, tags, price, status, published_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, 'published', now())",
    )
        .bind(id)
        .bind(instructor)
        .bind(title)
        .bind(format!(
            "{}-{}",
            lectern_core::courses::slugify(title),
            id.simple()
        ))
        .bind(short)
        .bind(description)
        .bind(tags.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>())
        .bind(price)
        .execute(pool)
        .await
        .unwrap();
    if !extra.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE courses SET {extra} WHERE id = $1"
        )))
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    }
    id
}

async fn course_counts(app: &TestApp, id: Uuid) -> (i64, i64, f64) {
    let (_, c) = app.get(&format!("/api/v1/courses/{id}")).await;
    (
        c["enrollment_count"].as_i64().unwrap(),
        c["rating_count"].as_i64().unwrap(),
        c["rating_average"].as_f64().unwrap(),
    )
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fields(body: &Value) -> Vec<String> {
    let mut f: Vec<String> = body["error"]["fields"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    f.sort();
    f
}

#[tokio::test]
async fn authoring_sections_visibility_and_bad_input() {
    let app = TestApp::spawn().await;
    let teacher = app.register("teacher@example.com", "instructor").await;
    let t = token(&teacher);
    let student = app.register("student@example.com", "student").await;
    let s = token(&student);

    // Students cannot author.
    let (status, body) = app
        .call(
            "POST",
            "/api/v1/courses",
            Some(&s),
            Some(&json!({"title": "Mine"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    let (status, course) = app
        .call(
            "POST",
            "/api/v1/courses",
            Some(&t),
            Some(&json!({"title": "Intro to Rust", "price": "19.99", "currency": "eur", "tags": ["Rust", "rust", "systems"]})),
        )
        .await;
    assert_eq!(status, 201, "{course}");
    assert_eq!(course["slug"], "intro-to-rust");
    assert_eq!(course["status"], "draft");
    assert_eq!(course["price"], "19.99");
    assert_eq!(course["currency"], "EUR");
    assert_eq!(course["is_free"], false);
    assert_eq!(course["tags"], json!(["rust", "systems"]));
    assert_eq!(course["sections"].as_array().unwrap().len(), 1);
    assert_eq!(course["sections"][0]["title"], "Introduction");
    let id = course["id"].as_str().unwrap().to_owned();

    // A draft is 404 to everyone but its owner, by id and by slug.
    assert_eq!(app.get(&format!("/api/v1/courses/{id}")).await.0, 404);
    assert_eq!(
        app.call("GET", "/api/v1/courses/intro-to-rust", Some(&s), None)
            .await
            .0,
        404
    );
    assert_eq!(
        app.call("GET", "/api/v1/courses/intro-to-rust", Some(&t), None)
            .await
            .0,
        200
    );
    // Others cannot edit it either (and cannot learn it exists).
    let (status, _) = app
        .call(
            "PATCH",
            &format!("/api/v1/courses/{id}"),
            Some(&s),
            Some(&json!({"title": "x"})),
        )
        .await;
    assert_eq!(status, 404);

    // Every bad field is reported at once, and nothing changes.
    let (status, body) = app
        .call(
            "PATCH",
            &format!("/api/v1/courses/{id}"),
            Some(&t),
            Some(&json!({
                "title": "", "price": "-5", "currency": "XYZ", "category": "no-such-category",
                "difficulty": "legendary", "language": "english"
            })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        fields(&body),
        [
            "category",
            "currency",
            "difficulty",
            "language",
            "price",
            "title"
        ]
    );
    let (status, body) = app
        .call(
            "PATCH",
            &format!("/api/v1/courses/{id}"),
            Some(&t),
            Some(&json!({"title": "x".repeat(10_000), "price": 1e12})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(fields(&body), ["price", "title"]);
    let (status, body) = app
        .call(
            "PATCH",
            &format!("/api/v1/courses/{id}"),
            Some(&t),
            Some(&json!({"price": "12.5", "currency": "JPY"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (_, unchanged) = app
        .call("GET", &format!("/api/v1/courses/{id}"), Some(&t), None)
        .await;
    assert_eq!(unchanged["title"], "Intro to Rust");
    assert_eq!(unchanged["price"], "19.99");

    // Categories are admin-made and nest one level.
    let (status, parent) = app
        .post_as_admin("/api/v1/admin/categories", &json!({"name": "Programming"}))
        .await;
    assert_eq!(status, 201, "{parent}");
    let (status, child) = app
        .post_as_admin(
            "/api/v1/admin/categories",
            &json!({"name": "Rust", "parent": "programming"}),
        )
        .await;
    assert_eq!(status, 201, "{child}");
    let (status, body) = app
        .post_as_admin(
            "/api/v1/admin/categories",
            &json!({"name": "Async", "parent": "rust"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        app.call(
            "POST",
            "/api/v1/admin/categories",
            Some(&t),
            Some(&json!({"name": "Mine"}))
        )
        .await
        .0,
        403
    );
    let (status, patched) = app
        .call(
            "PATCH",
            &format!("/api/v1/courses/{id}"),
            Some(&t),
            Some(&json!({"category": "rust", "price": 0})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["category"]["slug"], "rust");
    assert_eq!(patched["is_free"], true);

    // Sections: added at the end or at a position; moves keep 1..n dense and unique.
    for title in ["Ownership", "Borrowing", "Lifetimes"] {
        let (status, body) = app
            .call(
                "POST",
                &format!("/api/v1/courses/{id}/sections"),
                Some(&t),
                Some(&json!({"title": title})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, first) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{id}/sections"),
            Some(&t),
            Some(&json!({"title": "Setup", "position": 1})),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    let titles = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["title"].as_str().unwrap().to_owned())
            .collect()
    };
    let positions = |v: &Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["position"].as_i64().unwrap())
            .collect()
    };
    let (_, list) = app
        .call(
            "GET",
            &format!("/api/v1/courses/{id}/sections"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(list["next_cursor"], Value::Null, "{list}");
    let list = list["items"].clone();
    assert_eq!(
        titles(&list),
        [
            "Setup",
            "Introduction",
            "Ownership",
            "Borrowing",
            "Lifetimes"
        ]
    );
    let lifetimes = list[4]["id"].as_str().unwrap().to_owned();
    let (status, moved) = app
        .call(
            "PATCH",
            &format!("/api/v1/sections/{lifetimes}"),
            Some(&t),
            Some(&json!({"position": 2})),
        )
        .await;
    assert_eq!(status, 200, "{moved}");
    let (_, list) = app
        .call(
            "GET",
            &format!("/api/v1/courses/{id}/sections"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(list["next_cursor"], Value::Null, "{list}");
    let list = list["items"].clone();
    assert_eq!(
        titles(&list),
        [
            "Setup",
            "Lifetimes",
            "Introduction",
            "Ownership",
            "Borrowing"
        ]
    );
    assert_eq!(positions(&list), [1, 2, 3, 4, 5]);
    for bad in [-3, 0, 6] {
        let (status, body) = app
            .call(
                "PATCH",
                &format!("/api/v1/sections/{lifetimes}"),
                Some(&t),
                Some(&json!({"position": bad})),
            )
            .await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(fields(&body), ["position"]);
    }
    // Concurrent moves of one course's sections leave a dense, unique order.
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    let moves = (0..20).map(|i| {
        let section = ids[i % ids.len()].clone();
        let (app, t) = (&app, &t);
        async move {
            let (status, body) = app
                .call(
                    "PATCH",
                    &format!("/api/v1/sections/{section}"),
                    Some(t),
                    Some(&json!({"position": (i * 7) % 5 + 1})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    });
    futures::future::join_all(moves).await;
    let (_, list) = app
        .call(
            "GET",
            &format!("/api/v1/courses/{id}/sections"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(list["next_cursor"], Value::Null, "{list}");
    let list = list["items"].clone();
    assert_eq!(positions(&list), [1, 2, 3, 4, 5]);
    let set: HashSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(set.len(), 5);
    // Deleting closes the gap.
    let second = list[1]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.call(
            "DELETE",
            &format!("/api/v1/sections/{second}"),
            Some(&t),
            None
        )
        .await
        .0,
        204
    );
    let (_, list) = app
        .call(
            "GET",
            &format!("/api/v1/courses/{id}/sections"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(list["next_cursor"], Value::Null, "{list}");
    let list = list["items"].clone();
    assert_eq!(positions(&list), [1, 2, 3, 4]);
    assert!(
        !list
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == second.as_str())
    );

    // Duplicate: a new draft with the sections, not the original's slug.
    let (status, copy) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{id}/duplicate"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 201, "{copy}");
    assert_eq!(copy["title"], "Intro to Rust (Copy)");
    assert_eq!(copy["slug"], "intro-to-rust-copy");
    assert_eq!(copy["status"], "draft");
    assert_eq!(titles(&json!(copy["sections"])), titles(&list));

    // Soft delete: gone for its owner too.
    let copy_id = copy["id"].as_str().unwrap();
    assert_eq!(
        app.call(
            "DELETE",
            &format!("/api/v1/courses/{copy_id}"),
            Some(&t),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        app.call("GET", &format!("/api/v1/courses/{copy_id}"), Some(&t), None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn twenty_parallel_creates_of_one_title_get_twenty_slugs() {
    let app = TestApp::spawn().await;
    let teachers = futures::future::join_all((0..4).map(|i| {
        let app = &app;
        async move {
            token(
                &app.register(&format!("t{i}@example.com"), "instructor")
                    .await,
            )
        }
    }))
    .await;
    let creates = (0..20).map(|i| {
        let (app, t) = (&app, teachers[i % 4].clone());
        async move {
            let (status, body) = app
                .call(
                    "POST",
                    "/api/v1/courses",
                    Some(&t),
                    Some(&json!({"title": "Intro to Rust"})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            body["slug"].as_str().unwrap().to_owned()
        }
    });
    let slugs: Vec<String> = futures::future::join_all(creates).await;
    let unique: HashSet<&String> = slugs.iter().collect();
    assert_eq!(unique.len(), 20, "{slugs:?}");
    let mut expected: HashSet<String> = (2..=20).map(|n| format!("intro-to-rust-{n}")).collect();
    expected.insert("intro-to-rust".into());
    assert_eq!(unique, expected.iter().collect());
}

/// Waits until some backend of this test's database waits for a lock.
async fn someone_waits_for_a_lock(pool: &PgPool) {
    wait_until(
        "a transaction waiting for a lock",
        Duration::from_secs(10),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            n > 0
        },
    )
    .await;
}

#[tokio::test]
async fn a_slug_taken_by_a_concurrent_creation_of_another_title_is_retried() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let teacher = app.register("slugs@example.com", "instructor").await;
    let (t, teacher_id) = (token(&teacher), user_id(&teacher));
    let (status, original) = app
        .call(
            "POST",
            "/api/v1/courses",
            Some(&t),
            Some(&json!({"title": "Intro"})),
        )
        .await;
    assert_eq!(status, 201, "{original}");
    // Another base slug's creation ("Intro" numbered 2, or "Intro" copied) holds the slug the
    // request is about to pick, uncommitted: the request waits for it, finds the slug taken once
    // it commits, and picks the next one instead of failing.
    for (path, body, held, expected) in [
        (
            "/api/v1/courses".to_owned(),
            Some(json!({"title": "Intro 2"})),
            "intro-2",
            "intro-2-2",
        ),
        (
            format!(
                "/api/v1/courses/{}/duplicate",
                original["id"].as_str().unwrap()
            ),
            None,
            "intro-copy",
            "intro-copy-2",
        ),
    ] {
        let mut holder = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO courses (id, instructor_id, title, slug) VALUES ($1, $2, 'Held', $3)",
        )
        .bind(Uuid::now_v7())
        .bind(teacher_id)
        .bind(held)
        .execute(&mut *holder)
        .await
        .unwrap();
        let request = app.call("POST", &path, Some(&t), body.as_ref());
        let release = async move {
            someone_waits_for_a_lock(pool).await;
            holder.commit().await.unwrap();
        };
        let ((status, created), ()) = futures::future::join(request, release).await;
        assert_eq!(status, 201, "{path}: {created}");
        assert_eq!(created["slug"], expected, "{created}");
    }
    let slugs: Vec<String> =
        sqlx::query_scalar("SELECT slug FROM courses ORDER BY slug COLLATE \"C\"")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        slugs,
        [
            "intro",
            "intro-2",
            "intro-2-2",
            "intro-copy",
            "intro-copy-2"
        ]
    );
}

#[tokio::test]
async fn publishing_checks_every_rule_and_tells_followers() {
    let app = TestApp::spawn().await;
    let teacher = app.register("teacher@example.com", "instructor").await;
    let (t, teacher_id) = (token(&teacher), user_id(&teacher));
    let mut followers = Vec::new();
    for name in ["ann", "bob", "cy"] {
        let body = app
            .register(&format!("{name}@example.com"), "student")
            .await;
        let f = token(&body);
        assert_eq!(
            app.call(
                "POST",
                &format!("/api/v1/users/{teacher_id}/follow"),
                Some(&f),
                None
            )
            .await
            .0,
            204
        );
        followers.push((name, f, user_id(&body)));
    }
    // cy wants no mail, only in-app notifications.
    let (status, _) = app
        .call(
            "PATCH",
            "/api/v1/me",
            Some(&followers[2].1),
            Some(&json!({"notification_preferences": {"email": false, "in_app": true}})),
        )
        .await;
    assert_eq!(status, 200);
    // Registration mails (four of them) out of the way first.
    app.smtp.wait_for(4, Duration::from_secs(20));

    let (_, course) = app
        .call(
            "POST",
            "/api/v1/courses",
            Some(&t),
            Some(&json!({"title": "Async Rust"})),
        )
        .await;
    let id: Uuid = course["id"].as_str().unwrap().parse().unwrap();
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{id}/publish"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        fields(&body),
        [
            "description",
            "learning_outcomes",
            "sections",
            "thumbnail_media_id",
            "videos"
        ]
    );

    // Meet the rules one by one; the list shrinks accordingly.
    let (_, section) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{id}/sections"),
            Some(&t),
            Some(&json!({"title": "Futures"})),
        )
        .await;
    let section: Uuid = section["id"].as_str().unwrap().parse().unwrap();
    let thumb = add_ready_media(&app.db.pool, teacher_id, id, None, "image").await;
    let (status, body) = app
        .call(
            "PATCH",
            &format!("/api/v1/courses/{id}"),
            Some(&t),
            Some(&json!({
                "description": "d".repeat(100),
                "learning_outcomes": ["Write futures", "Pin things", "Use tokio"],
                "thumbnail_media_id": thumb,
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..4 {
        add_ready_media(&app.db.pool, teacher_id, id, Some(section), "video").await;
    }
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{id}/publish"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(fields(&body), ["videos"], "{body}");
    add_ready_media(&app.db.pool, teacher_id, id, Some(section), "video").await;

    // An unverified instructor cannot publish.
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{id}/publish"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "email_unverified");
    verify(&app.db.pool, teacher_id).await;
    // Another instructor cannot publish it.
    let other = token(&app.register("other@example.com", "instructor").await);
    assert_eq!(
        app.call(
            "POST",
            &format!("/api/v1/courses/{id}/publish"),
            Some(&other),
            None
        )
        .await
        .0,
        404
    );

    let (status, published) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{id}/publish"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 200, "{published}");
    assert_eq!(published["course"]["status"], "published");
    let job = published["job"]["id"].as_str().unwrap();
    app.wait_for_job(job, "succeeded", Duration::from_secs(20))
        .await;

    // Everyone sees it now, and it is in the catalogue.
    let (status, public) = app.get(&format!("/api/v1/courses/{id}")).await;
    assert_eq!(status, 200, "{public}");
    assert_eq!(public["sections"][1]["media"].as_array().unwrap().len(), 5);

    // Followers: three in-app notifications, mail for the two who want it, with a working
    // one-click unsubscribe link.
    let notified: Vec<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM notifications WHERE type = 'course_published' ORDER BY user_id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let mut expected: Vec<Uuid> = followers.iter().map(|f| f.2).collect();
    expected.sort();
    assert_eq!(notified, expected);
    let mails = app.smtp.wait_for(7, Duration::from_secs(20));
    let announcements: Vec<_> = mails
        .iter()
        .filter(|m| m.parsed().subject.contains("Async Rust"))
        .collect();
    let mut to: Vec<String> = announcements
        .iter()
        .map(|m| m.recipients[0].clone())
        .collect();
    to.sort();
    assert_eq!(to, ["ann@example.com", "bob@example.com"]);
    let raw = announcements[0].data_str();
    let header = raw
        .lines()
        .find(|l| l.starts_with("List-Unsubscribe:"))
        .expect("List-Unsubscribe header");
    let url = header
        .split('<')
        .nth(1)
        .unwrap()
        .trim_end_matches('>')
        .trim()
        .to_owned();
    let parsed = announcements[0].parsed();
    assert!(parsed.text.contains(&url), "{}", parsed.text);
    let who = announcements[0].recipients[0].clone();
    let res = app.http.get(&url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let wants_mail: bool = sqlx::query_scalar("SELECT notify_email FROM users WHERE email = $1")
        .bind(&who)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(!wants_mail);
    let forged = url.replace("token=", "token=0");
    assert_eq!(
        app.http
            .get(&forged)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        422
    );

    // Publishing again is a no-op; unpublishing hides it again.
    let (status, again) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{id}/publish"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(again["job"].is_null());
    // A follower enrolls; after unpublishing, the public loses the course, they keep it.
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{id}/enroll"),
            Some(&followers[0].1),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{id}/unpublish"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.get(&format!("/api/v1/courses/{id}")).await.0, 404);
    assert_eq!(
        app.call(
            "GET",
            &format!("/api/v1/courses/{id}"),
            Some(&followers[1].1),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        app.call(
            "GET",
            &format!("/api/v1/courses/{id}"),
            Some(&followers[0].1),
            None
        )
        .await
        .0,
        200
    );
    // New enrollments are closed.
    assert_eq!(
        app.call(
            "POST",
            &format!("/api/v1/courses/{id}/enroll"),
            Some(&followers[1].1),
            None
        )
        .await
        .0,
        404
    );
    // The followers' inboxes: unread count, list, mark as read (someone else's ids change nothing).
    let (ann, bob) = (&followers[0].1, &followers[1].1);
    let (status, count) = app
        .call("GET", "/api/v1/notifications/unread-count", Some(ann), None)
        .await;
    assert_eq!(
        (status, count["unread"].as_i64()),
        (200, Some(1)),
        "{count}"
    );
    let (_, inbox) = app
        .call("GET", "/api/v1/notifications?unread=true", Some(ann), None)
        .await;
    assert_eq!(inbox["items"].as_array().unwrap().len(), 1, "{inbox}");
    assert_eq!(inbox["items"][0]["type"], "course_published");
    assert_eq!(inbox["items"][0]["data"]["course_id"], id.to_string());
    let ann_note = inbox["items"][0]["id"].clone();
    let (status, marked) = app
        .call(
            "POST",
            "/api/v1/notifications/read",
            Some(bob),
            Some(&json!({"ids": [ann_note]})),
        )
        .await;
    assert_eq!(
        (status, marked["marked"].as_i64()),
        (200, Some(0)),
        "{marked}"
    );
    let (_, marked) = app
        .call(
            "POST",
            "/api/v1/notifications/read",
            Some(ann),
            Some(&json!({"ids": [ann_note]})),
        )
        .await;
    assert_eq!(marked["marked"], 1);
    let (_, count) = app
        .call("GET", "/api/v1/notifications/unread-count", Some(ann), None)
        .await;
    assert_eq!(count["unread"], 0);
    let (_, count) = app
        .call("GET", "/api/v1/notifications/unread-count", Some(bob), None)
        .await;
    assert_eq!(count["unread"], 1);
    assert_eq!(
        app.call(
            "POST",
            "/api/v1/notifications/read",
            Some(bob),
            Some(&json!({}))
        )
        .await
        .0,
        422
    );

    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE type = 'course_published'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(count, 3);
}

#[tokio::test]
async fn search_ranks_title_matches_first_tolerates_typos_filters_and_pages() {
    let app = TestApp::spawn().await;
    let teacher = app.register("teacher@example.com", "instructor").await;
    let teacher_id = user_id(&teacher);
    let other = user_id(&app.register("other@example.com", "instructor").await);
    let pool = &app.db.pool;
    let title_match = seed_published(
        pool,
        teacher_id,
        "Rust Programming for Beginners",
        "Learn a systems language",
        "Ownership and borrowing.",
        &["systems"],
        "0",
        "difficulty = 'beginner'",
    )
    .await;
    let description_match = seed_published(
        pool,
        other,
        "Cast Iron Cooking",
        "Pans for life",
        "Season your pan and remove rust with salt and oil.",
        &["kitchen"],
        "25.00",
        "difficulty = 'intermediate', language = 'fr', rating_average = 4.5",
    )
    .await;
    let tag_match = seed_published(
        pool,
        other,
        "Embedded Systems",
        "Microcontrollers",
        "Blinking LEDs.",
        &["rust", "embedded"],
        "50.00",
        "rating_average = 3.9",
    )
    .await;
    // A draft that matches never appears.
    sqlx::query("INSERT INTO courses (id, instructor_id, title, slug) VALUES ($1, $2, 'Rust Secrets', 'rust-secrets')")
        .bind(Uuid::now_v7())
        .bind(teacher_id)
        .execute(pool)
        .await
        .unwrap();

    let ids = |v: &Value| -> Vec<Uuid> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let (status, found) = app.get("/api/v1/courses?q=rust").await;
    assert_eq!(status, 200, "{found}");
    // Weights: title (A) > short description (B) > description (C) > tags (D).
    assert_eq!(
        ids(&found),
        [title_match, description_match, tag_match],
        "{found}"
    );
    // Typos still find the course by its title.
    let (_, found) = app.get("/api/v1/courses?q=Rust%20Progamming").await;
    assert_eq!(ids(&found).first(), Some(&title_match), "{found}");
    let (_, found) = app
        .get("/api/v1/courses?q=Rsut%20Programing%20for%20Begginers")
        .await;
    assert_eq!(ids(&found).first(), Some(&title_match), "{found}");
    // Filters.
    let (_, found) = app.get("/api/v1/courses?q=rust&is_free=true").await;
    assert_eq!(ids(&found), [title_match]);
    let (_, found) = app.get("/api/v1/courses?min_price=10&max_price=30").await;
    assert_eq!(ids(&found), [description_match]);
    let (_, found) = app.get("/api/v1/courses?language=fr").await;
    assert_eq!(ids(&found), [description_match]);
    let (_, found) = app.get("/api/v1/courses?min_rating=4").await;
    assert_eq!(ids(&found), [description_match]);
    let (_, found) = app
        .get(&format!(
            "/api/v1/courses?instructor={other}&order_by=price"
        ))
        .await;
    assert_eq!(ids(&found), [description_match, tag_match]);
    let (_, found) = app.get("/api/v1/courses?order_by=-price").await;
    assert_eq!(ids(&found), [tag_match, description_match, title_match]);
    let (_, found) = app.get("/api/v1/courses?difficulty=intermediate").await;
    assert_eq!(ids(&found), [description_match]);
    // Bad parameters: 422 naming each one.
    let (status, body) = app
        .get("/api/v1/courses?order_by=title;drop&min_price=-1&difficulty=x&category=nope")
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(fields(&body), ["difficulty", "min_price", "order_by"]);
    let (status, body) = app.get("/api/v1/courses?category=nope").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(fields(&body), ["category"]);

    // Cursor pages: 25 more courses, pages of 10, each exactly once in price order.
    for i in 0..25 {
        seed_published(
            pool,
            teacher_id,
            &format!("Course {i}"),
            "",
            "",
            &[],
            &format!("{}.00", 100 + i % 7),
            "",
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/courses?order_by=price&limit=10&cursor={c}"),
            None => "/api/v1/courses?order_by=price&limit=10".into(),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let prices: Vec<f64> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["price"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{prices:?}");
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 28);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 28);
    let (status, body) = app.get("/api/v1/courses?cursor=garbage").await;
    assert_eq!(status, 422, "{body}");

    // The search uses the indexes: fill the catalogue, then look at the plans.
    sqlx::query(
        "INSERT INTO courses (id, instructor_id, title, slug, description, status, published_at, price)
         SELECT gen_random_uuid(), $1, 'Generated course ' || g, 'generated-' || g, 'About topic ' || g,
                'published', now() - g * interval '1 minute', (g % 200)::numeric
           FROM generate_series(1, 20000) g",
    )
    .bind(other)
    .execute(pool)
    .await
    .unwrap();
    sqlx::raw_sql("VACUUM ANALYZE courses")
        .execute(pool)
        .await
        .unwrap();
    let plan =
        |params: lectern_core::courses::catalog::SearchParams, fuzzy: bool, args: &'static str| {
            let sql = lectern_core::courses::catalog::search_sql(&params, fuzzy).unwrap();
            async move {
                let mut conn = pool.acquire().await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE s AS {sql}")))
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                let rows: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN EXECUTE s({args})")))
                        .fetch_all(&mut *conn)
                        .await
                        .unwrap();
                sqlx::raw_sql("DEALLOCATE s")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                rows.join("\n")
            }
        };
    let query = |q: &str| lectern_core::courses::catalog::SearchParams {
        q: Some(q.into()),
        ..Default::default()
    };
    let text = plan(query("rust"), false, "'rust', 'rust', 20").await;
    assert!(text.contains("courses_search_idx"), "{text}");
    let text = plan(
        query("rsut progrmming"),
        true,
        "'rsut progrmming', 'rsut progrmming', 20",
    )
    .await;
    assert!(text.contains("courses_title_trgm_idx"), "{text}");
    let text = plan(
        lectern_core::courses::catalog::SearchParams::default(),
        false,
        "20",
    )
    .await;
    assert!(text.contains("courses_published_idx"), "{text}");
}

#[tokio::test]
async fn enrollment_reviews_statistics_and_recommendations() {
    let app = TestApp::spawn().await;
    let teacher = app.register("teacher@example.com", "instructor").await;
    let (t, teacher_id) = (token(&teacher), user_id(&teacher));
    let student = app.register("student@example.com", "student").await;
    let (s, student_id) = (token(&student), user_id(&student));
    let pool = &app.db.pool;
    let (_, cat) = app
        .post_as_admin("/api/v1/admin/categories", &json!({"name": "Data"}))
        .await;
    let cat: Uuid = cat["id"].as_str().unwrap().parse().unwrap();
    let free = seed_published(
        pool,
        teacher_id,
        "Free SQL",
        "",
        "",
        &[],
        "0",
        &format!("category_id = '{cat}'"),
    )
    .await;
    let paid = seed_published(pool, teacher_id, "Paid SQL", "", "", &[], "19.99", "").await;
    let draft = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO courses (id, instructor_id, title, slug) VALUES ($1, $2, 'Draft', 'draft')",
    )
    .bind(draft)
    .bind(teacher_id)
    .execute(pool)
    .await
    .unwrap();

    // Reviews need an enrollment.
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{free}/reviews"),
            Some(&s),
            Some(&json!({"rating": 5})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "not_enrolled");

    // Enrolling twice (even concurrently) gives one enrollment.
    let enroll_path = format!("/api/v1/courses/{free}/enroll");
    let attempts = (0..5).map(|_| app.call("POST", &enroll_path, Some(&s), None));
    let results = futures::future::join_all(attempts).await;
    let created = results.iter().filter(|(status, _)| *status == 201).count();
    assert_eq!(created, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(status, _)| *status == 201 || *status == 200)
    );
    let enrollment_ids: HashSet<&str> = results
        .iter()
        .map(|(_, b)| b["enrollment"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(enrollment_ids.len(), 1);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM enrollments")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    // Drafts and instructors' own courses cannot be enrolled in.
    assert_eq!(
        app.call(
            "POST",
            &format!("/api/v1/courses/{draft}/enroll"),
            Some(&s),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        app.call(
            "POST",
            &format!("/api/v1/courses/{free}/enroll"),
            Some(&t),
            None
        )
        .await
        .0,
        409
    );

    // The counters follow through the statistics job.
    wait_until("enrollment counted", Duration::from_secs(15), || async {
        course_counts(&app, free).await.0 == 1
    })
    .await;

    // Review: create, then edit (one per student), then the instructor replies.
    let (status, review) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{free}/reviews"),
            Some(&s),
            Some(&json!({"rating": 4, "body": "Good"})),
        )
        .await;
    assert_eq!(status, 201, "{review}");
    let (status, edited) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{free}/reviews"),
            Some(&s),
            Some(&json!({"rating": 2, "body": "Meh"})),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["id"], review["id"]);
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{free}/reviews"),
            Some(&s),
            Some(&json!({"rating": 6})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let review_id = review["id"].as_str().unwrap();
    assert_eq!(
        app.call(
            "POST",
            &format!("/api/v1/reviews/{review_id}/reply"),
            Some(&s),
            Some(&json!({"reply": "hi"}))
        )
        .await
        .0,
        403
    );
    let (status, replied) = app
        .call(
            "POST",
            &format!("/api/v1/reviews/{review_id}/reply"),
            Some(&t),
            Some(&json!({"reply": "Thanks!"})),
        )
        .await;
    assert_eq!(status, 200, "{replied}");
    let (_, list) = app.get(&format!("/api/v1/courses/{free}/reviews")).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["rating"], 2);
    assert_eq!(list["items"][0]["reply"], "Thanks!");
    wait_until("rating counted", Duration::from_secs(15), || async {
        course_counts(&app, free).await == (1, 1, 2.0)
    })
    .await;

    // The instructor was told, and the student welcomed.
    wait_until("instructor notified", Duration::from_secs(15), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifications WHERE user_id = $1 AND type = 'new_enrollment'",
        )
        .bind(teacher_id)
        .fetch_one(pool)
        .await
        .unwrap();
        n == 1
    })
    .await;
    let mails = app.smtp.wait_for(3, Duration::from_secs(20));
    assert!(mails.iter().any(|m| m.recipients == ["student@example.com"]
        && m.parsed().subject.contains("Welcome to Free SQL")));

    // Drop keeps the row and its progress; re-enrolling re-activates it.
    // Progress: two videos, one watched to the end.
    let section = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO sections (id, course_id, title, position) VALUES ($1, $2, 'Lessons', 1)",
    )
    .bind(section)
    .bind(free)
    .execute(pool)
    .await
    .unwrap();
    let first = add_ready_media(pool, teacher_id, free, Some(section), "video").await;
    add_ready_media(pool, teacher_id, free, Some(section), "video").await;
    sqlx::query(
        "INSERT INTO video_progress (user_id, media_id, enrollment_id, covered, completed_at)
         SELECT $1, $2, id, '{[0,60)}', now() FROM enrollments WHERE user_id = $1",
    )
    .bind(student_id)
    .bind(first)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE enrollments SET progress = 50 WHERE user_id = $1")
        .bind(student_id)
        .execute(pool)
        .await
        .unwrap();
    let (status, dropped) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{free}/drop"),
            Some(&s),
            None,
        )
        .await;
    assert_eq!(status, 200, "{dropped}");
    assert_eq!(dropped["status"], "dropped");
    wait_until("drop counted", Duration::from_secs(15), || async {
        course_counts(&app, free).await.0 == 0
    })
    .await;
    let (status, back) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{free}/enroll"),
            Some(&s),
            None,
        )
        .await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["outcome"], "reactivated");
    assert_eq!(back["enrollment"]["progress"], 50.0);
    assert_eq!(back["enrollment"]["id"], dropped["id"]);

    // Paid: verified email, a grant and an Idempotency-Key; the price is recorded.
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{paid}/enroll"),
            Some(&s),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    verify(pool, student_id).await;
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{paid}/enroll"),
            Some(&s),
            None,
        )
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "payment_required");
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{paid}/grants"),
            Some(&t),
            Some(&json!({ "user_id": student_id })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{paid}/enroll"),
            Some(&s),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(fields(&body), ["Idempotency-Key"]);
    let req = app
        .http
        .post(format!("{}/api/v1/courses/{paid}/enroll", app.url))
        .bearer_auth(&s)
        .header("Idempotency-Key", "k-1");
    let (status, body, _) = app.raw(req).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["enrollment"]["price_paid"], "19.99");
    let (_, mine) = app
        .call("GET", "/api/v1/me/enrollments", Some(&s), None)
        .await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 2);

    // Recommendations: the same category first, nothing already enrolled; popular for newcomers.
    let same_cat = seed_published(
        pool,
        teacher_id,
        "Advanced SQL",
        "",
        "",
        &[],
        "0",
        &format!("category_id = '{cat}'"),
    )
    .await;
    // A category includes its subcategories in search; one leaf category alone is exact.
    let (status, sub) = app
        .post_as_admin(
            "/api/v1/admin/categories",
            &json!({"name": "SQL Tuning", "parent": "data"}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    let sub_id = sub["id"].as_str().unwrap();
    let tuning = seed_published(
        pool,
        teacher_id,
        "Index Tuning",
        "",
        "",
        &[],
        "0",
        &format!("category_id = '{sub_id}'"),
    )
    .await;
    let found = |v: &Value| -> HashSet<Uuid> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let (_, parent) = app
        .get("/api/v1/courses?category=data&order_by=price")
        .await;
    assert_eq!(
        found(&parent),
        HashSet::from([free, same_cat, tuning]),
        "{parent}"
    );
    let (_, leaf) = app
        .get("/api/v1/courses?category=sql-tuning&order_by=price")
        .await;
    assert_eq!(found(&leaf), HashSet::from([tuning]), "{leaf}");
    let popular = seed_published(
        pool,
        user_id(&app.register("pop@example.com", "instructor").await),
        "Popular",
        "",
        "",
        &[],
        "0",
        "enrollment_count = 500, rating_average = 4.9, rating_count = 100",
    )
    .await;
    let (status, recs) = app
        .call("GET", "/api/v1/courses/recommendations", Some(&s), None)
        .await;
    assert_eq!(status, 200, "{recs}");
    let rec_ids: Vec<Uuid> = recs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(rec_ids.first(), Some(&same_cat), "{recs}");
    assert!(!rec_ids.contains(&free) && !rec_ids.contains(&paid));
    assert!(rec_ids.contains(&popular));
    assert!(rec_ids.len() > 1 && rec_ids.len() < 20, "{recs}");
    assert_eq!(
        recs["next_cursor"],
        Value::Null,
        "one page holds them all: {recs}"
    );
    // Pages of one walk the same ranking to its end; an edited cursor is refused.
    let mut walked: Vec<Uuid> = Vec::new();
    let mut path = "/api/v1/courses/recommendations?limit=1".to_owned();
    loop {
        let (status, page) = app.call("GET", &path, Some(&s), None).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{page}");
        walked.push(items[0]["id"].as_str().unwrap().parse().unwrap());
        let Some(cursor) = page["next_cursor"].as_str() else {
            break;
        };
        assert!(
            walked.len() < rec_ids.len(),
            "a cursor after the last: {page}"
        );
        path = format!("/api/v1/courses/recommendations?limit=1&cursor={cursor}");
    }
    assert_eq!(walked, rec_ids);
    let (status, body) = app
        .call(
            "GET",
            "/api/v1/courses/recommendations?cursor=5b5d.00",
            Some(&s),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["fields"]["cursor"].is_array(), "{body}");
    let newcomer = token(&app.register("new@example.com", "student").await);
    let (_, recs) = app
        .call(
            "GET",
            "/api/v1/courses/recommendations",
            Some(&newcomer),
            None,
        )
        .await;
    assert_eq!(recs["items"][0]["id"], popular.to_string(), "{recs}");
}

#[tokio::test]
async fn follower_mail_is_spread_to_the_configured_rate() {
    let app = lectern_tests::TestApp::spawn_with(lectern_tests::Options {
        no_worker: false,
        env: vec![("MAIL_BULK_PER_MINUTE".into(), "60".into())],
    })
    .await;
    let pool = &app.db.pool;
    let (teacher, t) = lectern_tests::fixtures::mint_users(pool, 1, "instructor")
        .await
        .remove(0);
    let followers = lectern_tests::fixtures::mint_users(pool, 4, "student").await;
    for (_, f) in &followers {
        assert_eq!(
            app.call(
                "POST",
                &format!("/api/v1/users/{teacher}/follow"),
                Some(f),
                None
            )
            .await
            .0,
            204
        );
    }
    // A course that meets every publishing rule, written as the media pipeline would leave it.
    let (course, _) = lectern_tests::fixtures::published_course_with_videos(
        pool,
        teacher,
        "Throttled",
        "0",
        5,
        60.0,
    )
    .await;
    sqlx::query("INSERT INTO sections (id, course_id, title, position) VALUES ($1, $2, 'More', 2)")
        .bind(Uuid::now_v7())
        .bind(course)
        .execute(pool)
        .await
        .unwrap();
    let thumb = add_ready_media(pool, teacher, course, None, "image").await;
    sqlx::query(
        "UPDATE courses SET status = 'draft', description = repeat('d', 120), learning_outcomes = '{a,b,c}',
                thumbnail_media_id = $2 WHERE id = $1",
    )
    .bind(course)
    .bind(thumb)
    .execute(pool)
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{course}/publish"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Four mails at 60 a minute: one a second.
    let mut run_at: Vec<f64> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while run_at.len() < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        run_at = sqlx::query_scalar(
            "SELECT extract(epoch FROM run_at)::float8 FROM jobs
              WHERE kind = 'send_email' AND payload->>'template' = 'course_published' ORDER BY run_at",
        )
        .fetch_all(pool)
        .await
        .unwrap();
    }
    assert_eq!(run_at.len(), 4);
    for pair in run_at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((0.99..1.01).contains(&gap), "{run_at:?}");
    }
    let mails = app.smtp.wait_for(4, Duration::from_secs(20));
    assert_eq!(mails.len(), 4);
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "all four arrived within {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn forged_catalogue_cursors_are_refused_for_every_order() {
    let app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let pool = &app.db.pool;
    let (teacher, _) = lectern_tests::fixtures::mint_users(pool, 1, "instructor")
        .await
        .remove(0);
    for (i, price) in ["10.00", "20.00", "30.00"].into_iter().enumerate() {
        seed_published(
            pool,
            teacher,
            &format!("Course {i}"),
            "",
            "",
            &[],
            price,
            &format!("rating_average = {i}, enrollment_count = {i}"),
        )
        .await;
    }
    let orders = [
        ("price", "PriceAsc"),
        ("-price", "PriceDesc"),
        ("rating", "Rating"),
        ("popularity", "Popularity"),
        ("newest", "Newest"),
    ];
    let cursor_of = |body: &Value| body["next_cursor"].as_str().unwrap().to_owned();
    for (order, tag) in orders {
        // The cursors the API gives out still page through.
        let (status, first) = app
            .get(&format!("/api/v1/courses?order_by={order}&limit=1"))
            .await;
        assert_eq!(status, 200, "{order}: {first}");
        let real = cursor_of(&first);
        let (status, second) = app
            .get(&format!(
                "/api/v1/courses?order_by={order}&limit=1&cursor={real}"
            ))
            .await;
        assert_eq!(status, 200, "{order}: {second}");
        assert_ne!(first["items"][0]["id"], second["items"][0]["id"]);

        // Positions the API never gave out: keys of the wrong type, out of range, with a NUL;
        // unsigned (the old format), or with a real cursor's signature.
        let (_, signature) = real.split_once('.').expect("a signed cursor");
        for key in [
            "not a number",
            "1e999999",
            "-5000-01-01 00:00:00+00",
            "1\u{0}",
            "",
        ] {
            let body = hex::encode(serde_json::to_vec(&json!([key, Uuid::now_v7(), tag])).unwrap());
            for forged in [body.clone(), format!("{body}.{signature}")] {
                let (status, answer) = app
                    .get(&format!(
                        "/api/v1/courses?order_by={order}&limit=1&cursor={forged}"
                    ))
                    .await;
                assert_eq!(status, 422, "{order} {key:?}: {answer}");
                assert_eq!(fields(&answer), ["cursor"], "{answer}");
            }
        }
        // Another order's cursor is refused too.
        let other = if order == "rating" {
            "popularity"
        } else {
            "rating"
        };
        let (status, answer) = app
            .get(&format!(
                "/api/v1/courses?order_by={other}&limit=1&cursor={real}"
            ))
            .await;
        assert_eq!(status, 422, "{order} cursor on {other}: {answer}");
    }
}

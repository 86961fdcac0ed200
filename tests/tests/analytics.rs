//! Instructor dashboards against a fixture whose figures are computed by hand here; and the number
//! of SQL statements per dashboard, counted from the API's own statement log, stays the same when
//! the fixture grows.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use lectern_tests::fixtures::{mint_users, published_course_with_videos};
use lectern_tests::{Options, TestApp};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

#[allow(clippy::too_many_arguments)]
async fn enroll_at(
    pool: &PgPool,
    user: Uuid,
    course: Uuid,
    at: &str,
    status: &str,
    progress: f64,
    paid: &str,
    currency: &str,
) {
    sqlx::query(
        "INSERT INTO enrollments (id, user_id, course_id, status, progress, price_paid, currency, enrolled_at)
         VALUES ($1, $2, $3, $4, $5, $6::numeric, $7, $8::timestamptz)",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(course)
    .bind(status)
    .bind(progress)
    .bind(paid)
    .bind(currency)
    .bind(at)
    .execute(pool)
    .await
    .unwrap();
}

/// How many SQL statements the API ran for the request with this id (from its JSON log).
fn statements(app: &TestApp, request_id: &str) -> usize {
    app.api
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "sqlx::query" && v["span"]["request_id"] == request_id)
        .count()
}

async fn get_counted(app: &TestApp, token: &str, path: &str) -> (u16, Value, usize) {
    let request_id = Uuid::new_v4().to_string();
    let req = app
        .http
        .get(format!("{}{path}", app.url))
        .bearer_auth(token)
        .header("X-Request-Id", &request_id);
    let (status, body, _) = app.raw(req).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    (status, body, statements(app, &request_id))
}

#[tokio::test]
async fn dashboards_match_hand_computed_figures_with_a_constant_number_of_statements() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![
            ("LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info,sqlx::query=debug".into()),
        ],
    })
    .await;
    let pool = &app.db.pool;
    let mut teachers = mint_users(pool, 2, "instructor").await;
    let (other_teacher, other_token) = teachers.remove(1);
    let (teacher, token) = teachers.remove(0);
    let (a, a_videos) =
        published_course_with_videos(pool, teacher, "Course A", "10.00", 2, 100.0).await;
    let (b, _) = published_course_with_videos(pool, teacher, "Course B", "0", 1, 60.0).await;
    let (c, _) = published_course_with_videos(pool, teacher, "Course C", "0", 0, 60.0).await;
    sqlx::query("UPDATE courses SET status = 'draft' WHERE id = $1")
        .bind(c)
        .execute(pool)
        .await
        .unwrap();
    let (theirs, _) =
        published_course_with_videos(pool, other_teacher, "Not yours", "0", 0, 60.0).await;
    let s = mint_users(pool, 5, "student").await;
    // Course A: two paid in USD on 2026-11-20 (one completed), one paid in EUR on 2026-11-17 and
    // dropped; course B: one free on 2026-11-01 at 23:30 UTC (2026-11-02 in Tokyo).
    enroll_at(
        pool,
        s[0].0,
        a,
        "2026-11-20 10:00:00+00",
        "completed",
        100.0,
        "10.00",
        "USD",
    )
    .await;
    enroll_at(
        pool,
        s[1].0,
        a,
        "2026-11-20 12:00:00+00",
        "active",
        30.0,
        "10.00",
        "USD",
    )
    .await;
    enroll_at(
        pool,
        s[2].0,
        a,
        "2026-11-17 09:00:00+00",
        "dropped",
        60.0,
        "9.00",
        "EUR",
    )
    .await;
    enroll_at(
        pool,
        s[3].0,
        b,
        "2026-11-01 23:30:00+00",
        "active",
        80.0,
        "0",
        "USD",
    )
    .await;
    for (user, rating) in [(s[0].0, 5), (s[1].0, 3)] {
        sqlx::query("INSERT INTO reviews (id, course_id, user_id, rating) VALUES ($1, $2, $3, $4)")
            .bind(Uuid::now_v7())
            .bind(a)
            .bind(user)
            .bind(rating as i16)
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE courses SET rating_average = 4, rating_count = 2 WHERE id = $1")
        .bind(a)
        .execute(pool)
        .await
        .unwrap();
    // Watching: student 0 watched all of video 1 (completed), student 1 half of it.
    for (user, covered, done) in [(s[0].0, "{[0,100)}", true), (s[1].0, "{[0,50)}", false)] {
        sqlx::query(
            "INSERT INTO video_progress (user_id, media_id, enrollment_id, covered, completed_at)
             SELECT $1, $2, e.id, $3::int4multirange, CASE WHEN $4 THEN now() END FROM enrollments e
              WHERE e.user_id = $1 AND e.course_id = $5",
        )
        .bind(user)
        .bind(a_videos[0])
        .bind(covered)
        .bind(done)
        .bind(a)
        .execute(pool)
        .await
        .unwrap();
    }

    let range = "from=2026-10-28&to=2026-11-26";
    let (status, o, overview_statements) = get_counted(
        &app,
        &token,
        &format!("/api/v1/instructor/overview?{range}"),
    )
    .await;
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["courses_total"], 3);
    assert_eq!(o["courses_published"], 2);
    assert_eq!(o["enrollments_total"], 3, "the dropped one does not count");
    assert_eq!(o["completions_total"], 1);
    assert_eq!(
        o["enrollments_in_range"], 4,
        "enrollments made in the range, dropped or not"
    );
    assert_eq!(o["rating_average"], 4.0);
    assert_eq!(
        o["revenue"],
        serde_json::json!([{"currency": "EUR", "amount": "9.00"}, {"currency": "USD", "amount": "20.00"}])
    );
    let course_c = o["courses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == c.to_string())
        .unwrap();
    assert_eq!(
        (
            course_c["enrollments"].as_i64(),
            course_c["completion_rate"].as_f64()
        ),
        (Some(0), Some(0.0))
    );
    let course_a = o["courses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == a.to_string())
        .unwrap();
    assert_eq!(course_a["completion_rate"], 50.0);

    let (status, d, course_statements) = get_counted(
        &app,
        &token,
        &format!("/api/v1/instructor/courses/{a}/analytics?from=2026-11-15&to=2026-11-21"),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(
        (d["enrollments"].as_i64(), d["completions"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(d["completion_rate"], 50.0);
    assert_eq!(d["average_progress"], 65.0);
    let trend: Vec<(String, i64)> = d["enrollment_trend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["day"].as_str().unwrap().to_owned(),
                x["enrollments"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        trend,
        [
            ("2026-11-15", 0),
            ("2026-11-16", 0),
            ("2026-11-17", 1),
            ("2026-11-18", 0),
            ("2026-11-19", 0),
            ("2026-11-20", 2),
            ("2026-11-21", 0)
        ]
        .map(|(d, n)| (d.to_owned(), n))
    );
    let buckets: Vec<i64> = d["progress_distribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["students"].as_i64().unwrap())
        .collect();
    assert_eq!(buckets, [0, 1, 0, 0, 1]);
    let stars: Vec<i64> = d["rating_distribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["reviews"].as_i64().unwrap())
        .collect();
    assert_eq!(stars, [0, 0, 1, 0, 1]);
    assert_eq!(
        d["revenue"],
        serde_json::json!([{"currency": "EUR", "amount": "9.00"}, {"currency": "USD", "amount": "20.00"}])
    );
    let top = &d["top_videos"][0];
    assert_eq!(top["media_id"], a_videos[0].to_string());
    assert_eq!(
        (
            top["viewers"].as_i64(),
            top["completions"].as_i64(),
            top["average_watched"].as_f64()
        ),
        (Some(2), Some(1), Some(75.0))
    );
    assert_eq!(d["top_videos"][1]["viewers"], 0);

    // Days are counted in the instructor's time zone.
    let day_of = |d: &Value| -> Vec<String> {
        d["enrollment_trend"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["enrollments"] == 1)
            .map(|x| x["day"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, utc, _) = get_counted(
        &app,
        &token,
        &format!("/api/v1/instructor/courses/{b}/analytics?from=2026-10-30&to=2026-11-03"),
    )
    .await;
    assert_eq!(day_of(&utc), ["2026-11-01"]);
    let (_, tokyo, _) = get_counted(
        &app,
        &token,
        &format!(
            "/api/v1/instructor/courses/{b}/analytics?from=2026-10-30&to=2026-11-03&tz=Asia/Tokyo"
        ),
    )
    .await;
    assert_eq!(day_of(&tokyo), ["2026-11-02"]);

    // Bad input.
    assert_eq!(
        get_counted(
            &app,
            &token,
            &format!("/api/v1/instructor/courses/{theirs}/analytics")
        )
        .await
        .0,
        404
    );
    assert_eq!(
        get_counted(
            &app,
            &other_token,
            &format!("/api/v1/instructor/courses/{a}/analytics")
        )
        .await
        .0,
        404
    );
    for bad in [
        "from=2000-01-01&to=2020-01-01",
        "from=2026-11-20&to=2026-11-01",
        "tz=Mars/Olympus",
        "from=yesterday",
    ] {
        let (status, body, _) =
            get_counted(&app, &token, &format!("/api/v1/instructor/overview?{bad}")).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    assert_eq!(
        get_counted(&app, &s[0].1, "/api/v1/instructor/overview")
            .await
            .0,
        403
    );

    // Grow the fixture tenfold (more courses, students, videos, days): the same statement counts.
    assert!(overview_statements > 0 && course_statements > 0);
    for i in 0..20 {
        let (course, videos) =
            published_course_with_videos(pool, teacher, &format!("More {i}"), "5.00", 5, 100.0)
                .await;
        sqlx::query(
            "INSERT INTO enrollments (id, user_id, course_id, enrolled_at, price_paid)
             SELECT gen_random_uuid(), u.id, $1, now() - (random() * 40) * interval '1 day', 5
               FROM users u WHERE u.role = 'student'",
        )
        .bind(course)
        .execute(pool)
        .await
        .unwrap();
        if i == 0 {
            sqlx::query(
                "INSERT INTO video_progress (user_id, media_id, enrollment_id, covered)
                 SELECT e.user_id, v, e.id, '{[0,10)}' FROM enrollments e, unnest($2::uuid[]) v WHERE e.course_id = $1",
            )
            .bind(course)
            .bind(&videos)
            .execute(pool)
            .await
            .unwrap();
        }
    }
    let (_, _, grown_overview) = get_counted(
        &app,
        &token,
        &format!("/api/v1/instructor/overview?{range}"),
    )
    .await;
    let (_, _, grown_course) = get_counted(
        &app,
        &token,
        &format!("/api/v1/instructor/courses/{a}/analytics?from=2026-01-01&to=2026-11-21"),
    )
    .await;
    assert_eq!(
        (grown_overview, grown_course),
        (overview_statements, course_statements)
    );
    assert!(
        course_statements <= 10,
        "{course_statements} statements for one course dashboard"
    );
}

#[tokio::test]
async fn dates_postgresql_cannot_store_are_refused_with_422() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let pool = &app.db.pool;
    let (teacher, token) = mint_users(pool, 1, "instructor").await.remove(0);
    let (course, _) = published_course_with_videos(pool, teacher, "Dated", "0", 0, 60.0).await;
    for path in [
        "/api/v1/instructor/overview".to_owned(),
        format!("/api/v1/instructor/courses/{course}/analytics"),
    ] {
        for (range, field) in [
            ("from=-5000-01-01", "from"),
            ("from=-5000-01-01&to=-4999-12-31", "from"),
            ("to=99999-01-01", "to"),
            ("from=262142-01-01&to=262142-12-31", "from"),
            ("from=1969-12-31&to=1970-01-05", "from"),
        ] {
            let (status, body) = app
                .call("GET", &format!("{path}?{range}"), Some(&token), None)
                .await;
            assert_eq!(status, 422, "{path}?{range}: {body}");
            assert!(
                body["error"]["fields"][field].is_array(),
                "{path}?{range}: {body}"
            );
        }
        // The bounds themselves are fine.
        let (status, body) = app
            .call(
                "GET",
                &format!("{path}?from=1970-01-01&to=1970-01-31"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{path}: {body}");
    }
}

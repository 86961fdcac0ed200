//! The product's mail end to end, through the real worker and a real SMTP server: the welcome
//! on confirmation, the daily notification digest (both parts, List-Unsubscribe, the bulk
//! stream's pace) and an unsubscribe that stops optional mail already queued.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lectern_tests::fixtures::mint_users;
use lectern_tests::{Options, TestApp, token_from_link};
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn confirming_an_address_sends_the_welcome_once() {
    let app = TestApp::spawn().await;
    app.register("grace@example.com", "instructor").await;
    let mails = app.smtp.wait_for(1, Duration::from_secs(20));
    let token = token_from_link(&mails[0].parsed().text);
    let (status, user) = app
        .call(
            "POST",
            "/api/v1/auth/verify-email",
            None,
            Some(&json!({ "token": token })),
        )
        .await;
    assert_eq!(status, 200, "{user}");
    let mails = app.smtp.wait_for(2, Duration::from_secs(20));
    assert_eq!(mails.len(), 2, "{}", app.worker_log());
    assert_eq!(mails[1].recipients, ["grace@example.com"]);
    let welcome = mails[1].parsed();
    assert_eq!(welcome.subject, "Welcome to Lectern, Test User");
    assert!(
        welcome.text.contains("Create your first course"),
        "{}",
        welcome.text
    );
    assert!(welcome.html.contains("Create a course"), "{}", welcome.html);
    assert!(
        welcome
            .text
            .contains(&format!("{}/instructor/courses/new", app.url)),
        "{}",
        welcome.text
    );
    // Essential mail: no unsubscribe header.
    assert_eq!(welcome.list_unsubscribe, None);
    // A spent link changes nothing and sends nothing more.
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/verify-email",
            None,
            Some(&json!({ "token": token })),
        )
        .await;
    assert_eq!(status, 422);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.smtp.messages().len(), 2);
}

/// Stores a notification for `user`, `minutes_ago` old.
async fn notify(app: &TestApp, user: Uuid, title: &str, minutes_ago: i32, read: bool) {
    sqlx::query(
        "INSERT INTO notifications (id, user_id, type, title, message, created_at, read_at)
         VALUES ($1, $2, 'new_enrollment', $3, $3 || ' (details)', now() - make_interval(mins => $4),
                 CASE WHEN $5 THEN now() END)",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(title)
    .bind(minutes_ago)
    .bind(read)
    .execute(&app.db.pool)
    .await
    .unwrap();
}

/// The queued digest mails: (job id, recipient, run_at in epoch seconds, unsubscribe url).
async fn digest_jobs(app: &TestApp) -> Vec<(Uuid, String, f64, String)> {
    sqlx::query_as(
        "SELECT id, payload->>'to', extract(epoch FROM run_at)::float8,
                payload->'vars'->>'unsubscribe_url'
           FROM jobs WHERE kind = 'send_email' AND payload->>'template' = 'notification_digest'
          ORDER BY run_at",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
}

async fn make_digest_day(app: &TestApp) {
    sqlx::query(
        "UPDATE schedules SET next_run_at = now() - interval '1 minute' WHERE name = 'notification_digest'",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn the_digest_summarises_unread_notifications_and_an_unsubscribe_stops_queued_mail() {
    // Six bulk mails a minute: the second digest waits ten seconds for its slot.
    let app = TestApp::spawn_with(Options {
        no_worker: false,
        env: vec![("MAIL_BULK_PER_MINUTE".into(), "6".into())],
    })
    .await;
    let users = mint_users(&app.db.pool, 4, "student").await;
    let (ada, bob, carol, dave) = (users[0].0, users[1].0, users[2].0, users[3].0);
    for i in 1..=7 {
        notify(&app, ada, &format!("Ada news {i}"), 100 - i, false).await;
    }
    notify(&app, ada, "Ada already read", 1, true).await;
    notify(&app, bob, "Bob news", 5, false).await;
    // Carol turned mail off; Dave read everything.
    notify(&app, carol, "Carol news", 5, false).await;
    sqlx::query("UPDATE users SET notify_email = false WHERE id = $1")
        .bind(carol)
        .execute(&app.db.pool)
        .await
        .unwrap();
    notify(&app, dave, "Dave news", 5, true).await;
    let address = |id: Uuid| format!("user-{id}@example.com");

    make_digest_day(&app).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut queued = digest_jobs(&app).await;
    while queued.len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        queued = digest_jobs(&app).await;
    }
    let to: Vec<&str> = queued.iter().map(|j| j.1.as_str()).collect();
    assert_eq!(to, [address(ada), address(bob)], "{}", app.worker_log());
    assert!(
        queued[1].2 - queued[0].2 >= 9.0,
        "the bulk stream spaces them: {queued:?}"
    );

    // Bob unsubscribes with his digest's one-click link before its slot comes.
    let res = app.http.get(&queued[1].3).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);

    // Ada's digest: both parts, the unsubscribe header, the newest five of seven and the rest counted.
    let mails = app.smtp.wait_for(1, Duration::from_secs(20));
    assert_eq!(mails.len(), 1, "{}", app.worker_log());
    assert_eq!(mails[0].recipients, [address(ada)]);
    let digest = mails[0].parsed();
    assert_eq!(digest.subject, "7 new notifications on Lectern");
    for part in [&digest.text, &digest.html] {
        for i in 3..=7 {
            assert!(part.contains(&format!("Ada news {i}")), "{part}");
        }
        assert!(!part.contains("Ada news 2"), "{part}");
        assert!(!part.contains("already read"), "{part}");
        assert!(part.contains("2 more"), "{part}");
        // The HTML part escapes the slashes (&#x2f;); a browser decodes them in the href.
        assert!(part.contains("unsubscribe?token="), "{part}");
    }
    let header = digest.list_unsubscribe.expect("List-Unsubscribe");
    assert!(header.starts_with('<') && header.contains("/api/v1/unsubscribe?token="));
    assert_ne!(
        header,
        format!("<{}>", queued[1].3),
        "each user has their own link"
    );

    // Bob's mail runs at its slot and is not sent: he turned optional mail off meanwhile.
    app.wait_for_job(
        &queued[1].0.to_string(),
        "succeeded",
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = app.smtp.messages();
    assert_eq!(
        mails.len(),
        1,
        "nothing for Bob: {:?}",
        mails.iter().map(|m| &m.recipients).collect::<Vec<_>>()
    );

    // The next run lists only what is new: nothing for Ada until a new notification arrives.
    notify(&app, ada, "Ada fresh news", 0, false).await;
    make_digest_day(&app).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while digest_jobs(&app).await.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mails = app.smtp.wait_for(2, Duration::from_secs(30));
    assert_eq!(mails.len(), 2, "{}", app.worker_log());
    let second = mails[1].parsed();
    assert_eq!(mails[1].recipients, [address(ada)]);
    assert_eq!(second.subject, "1 new notification on Lectern");
    assert!(second.text.contains("Ada fresh news"), "{}", second.text);
    assert!(!second.text.contains("Ada news 7"), "{}", second.text);
    assert_eq!(
        digest_jobs(&app).await.len(),
        3,
        "one new digest, for Ada only"
    );
}

/// The frontend of the link-following test: not the API's address, so a link built on
/// `PUBLIC_URL` would not start with it.
const FRONTEND: &str = "http://frontend.test:5173/app";

/// The first link in `text` that starts with `FRONTEND{path}`.
fn frontend_link(text: &str, path: &str) -> String {
    let prefix = format!("{FRONTEND}{path}");
    let at = text
        .find(&prefix)
        .unwrap_or_else(|| panic!("no {prefix} link in:\n{text}"));
    text[at..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
        .next()
        .unwrap()
        .to_owned()
}

/// Waits for the `n`th mail (1-based) to `to` and returns it.
async fn mail_to(app: &TestApp, to: &str, n: usize) -> lectern_tests::smtp::ParsedMail {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mine: Vec<_> = app
            .smtp
            .messages()
            .into_iter()
            .filter(|m| m.recipients == [to])
            .collect();
        if mine.len() >= n {
            return mine[n - 1].parsed();
        }
        assert!(
            Instant::now() < deadline,
            "mail {n} to {to} never came:\n{}",
            app.worker_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn login(app: &TestApp, password: &str) -> (u16, serde_json::Value) {
    app.call(
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&json!({"email": "lin@example.com", "password": password})),
    )
    .await
}

#[tokio::test]
async fn every_mailed_link_opens_the_frontend_and_its_token_completes_the_action() {
    let app = TestApp::spawn_with_env(&[("FRONTEND_URL", FRONTEND)]).await;
    app.wait_until_ready().await;
    let student = app.register("lin@example.com", "student").await;
    let s = student["access_token"].as_str().unwrap().to_owned();

    // Verification: FRONTEND_URL/verify-email?token=…, and the page's POST verifies the account.
    let verify = mail_to(&app, "lin@example.com", 1).await;
    let link = frontend_link(&verify.text, "/verify-email?token=");
    // The HTML part escapes slashes (&#x2f;); a browser decodes them in the href.
    let html = verify.html.replace("&#x2f;", "/");
    assert!(html.contains(&format!("href=\"{link}\"")), "{html}");
    let token = token_from_link(&link);
    assert_eq!(token.len(), 64, "{link}");
    let (status, user) = app
        .call(
            "POST",
            "/api/v1/auth/verify-email",
            None,
            Some(&json!({ "token": token })),
        )
        .await;
    assert_eq!(
        (status, user["email_verified"].as_bool()),
        (200, Some(true)),
        "{user}"
    );

    // The welcome sends a student to the catalogue; every mail's footer names the frontend.
    let welcome = mail_to(&app, "lin@example.com", 2).await;
    assert_eq!(
        frontend_link(&welcome.text, "/courses"),
        format!("{FRONTEND}/courses")
    );
    assert!(!welcome.text.contains(&app.url), "{}", welcome.text);

    // Reset: FRONTEND_URL/reset-password?token=…; the new password signs in, the old does not.
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/password-reset",
            None,
            Some(&json!({ "email": "lin@example.com" })),
        )
        .await;
    assert_eq!(status, 202);
    let reset = mail_to(&app, "lin@example.com", 3).await;
    let link = frontend_link(&reset.text, "/reset-password?token=");
    let (status, body) = app
        .call(
            "POST",
            "/api/v1/auth/password-reset/confirm",
            None,
            Some(&json!({ "token": token_from_link(&link), "password": "a brand new secret" })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(login(&app, "a brand new secret").await.0, 200);
    assert_eq!(login(&app, "correct horse battery").await.0, 401);
    let (_, session) = login(&app, "a brand new secret").await;
    let s_new = session["access_token"].as_str().unwrap().to_owned();
    assert_ne!(s, s_new);

    // Enrollment: the welcome links FRONTEND_URL/courses/{slug}, which names the course.
    let (_, teacher) = app.verified_instructor("ted@example.com").await;
    let course = Uuid::now_v7();
    let slug = format!("knots-{}", course.simple());
    sqlx::query(
        "INSERT INTO courses (id, instructor_id, title, slug, price, status, published_at)
         VALUES ($1, $2::uuid, 'Knots', $3, 0, 'published', now())",
    )
    .bind(course)
    .bind(&teacher)
    .bind(&slug)
    .execute(&app.db.pool)
    .await
    .unwrap();
    let (status, enrolled) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{course}/enroll"),
            Some(&s_new),
            None,
        )
        .await;
    assert_eq!(status, 201, "{enrolled}");
    let enrollment = mail_to(&app, "lin@example.com", 4).await;
    let link = frontend_link(&enrollment.text, "/courses/");
    assert_eq!(link, format!("{FRONTEND}/courses/{slug}"));
    let (status, page) = app
        .get(&format!(
            "/api/v1/courses/{}",
            link.rsplit('/').next().unwrap()
        ))
        .await;
    assert_eq!(
        (status, page["id"].as_str()),
        (200, Some(course.to_string().as_str()))
    );

    // The certificate: FRONTEND_URL/certificates/{id}, the id the public verification answers.
    let enrollment_id: Uuid = sqlx::query_scalar(
        "UPDATE enrollments SET status = 'completed', completed_at = now()
          WHERE course_id = $1 RETURNING id",
    )
    .bind(course)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    lectern_core::learning::certificates::run(
        &app.services(),
        &lectern_core::jobs::IssueCertificate { enrollment_id },
    )
    .await
    .expect("certificate issued");
    let certificate = mail_to(&app, "lin@example.com", 5).await;
    assert!(
        certificate.subject.contains("certificate"),
        "{}",
        certificate.subject
    );
    let link = frontend_link(&certificate.text, "/certificates/");
    let id = link.rsplit('/').next().unwrap();
    let (status, cert) = app.get(&format!("/api/v1/certificates/{id}")).await;
    assert_eq!(status, 200, "{cert}");
    assert_eq!(cert["course_title"], "Knots");
    assert_eq!(cert["verify_url"], link.as_str());
}

#[tokio::test]
async fn the_digest_links_the_frontend_and_unsubscribes_through_the_api_in_one_click() {
    let app = TestApp::spawn_with_env(&[("FRONTEND_URL", FRONTEND)]).await;
    let users = mint_users(&app.db.pool, 1, "student").await;
    let ada = users[0].0;
    notify(&app, ada, "Ada news", 5, false).await;
    make_digest_day(&app).await;
    let to = format!("user-{ada}@example.com");
    let digest = mail_to(&app, &to, 1).await;
    assert_eq!(
        frontend_link(&digest.text, "/notifications"),
        format!("{FRONTEND}/notifications")
    );
    // The unsubscribe link stays on the API (PUBLIC_URL), and says it takes a one-click POST.
    let header = digest.list_unsubscribe.expect("List-Unsubscribe");
    let url = header
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned();
    assert!(
        url.starts_with(&format!("{}/api/v1/unsubscribe?token=", app.url)),
        "{url}"
    );
    let raw = app
        .smtp
        .messages()
        .into_iter()
        .find(|m| m.recipients == [to.as_str()])
        .unwrap()
        .data_str();
    assert!(
        raw.lines()
            .any(|l| l.trim() == "List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{raw}"
    );
    // What a mail client does with it (RFC 8058): POST the URL with that body.
    let res = app
        .http
        .post(&url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let wants_mail: bool = sqlx::query_scalar("SELECT notify_email FROM users WHERE id = $1")
        .bind(ada)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(!wants_mail);
}

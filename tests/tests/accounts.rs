//! Accounts and authentication, end to end against the real API, worker, PostgreSQL, Redis and SMTP.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lectern_tests::{ADMIN_TOKEN, JWT_SECRET, Options, TestApp, run_with_stdin, token_from_link};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn access(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_owned()
}

fn refresh_token(body: &Value) -> String {
    body["refresh_token"].as_str().unwrap().to_owned()
}

async fn login(app: &TestApp, email: &str, password: &str) -> (u16, Value) {
    app.call(
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&json!({"email": email, "password": password})),
    )
    .await
}

#[tokio::test]
async fn register_verify_login_refresh_and_logout() {
    let app = TestApp::spawn().await;
    let registered = app.register(" Ada@Example.COM ", "student").await;
    assert_eq!(registered["user"]["email"], "ada@example.com");
    assert_eq!(registered["user"]["role"], "student");
    assert_eq!(registered["user"]["email_verified"], false);
    assert_eq!(registered["expires_in"], 900);
    assert!(registered["user"].get("password_hash").is_none());

    // The verification mail arrives through the worker, and its link works once.
    let mails = app.smtp.wait_for(1, Duration::from_secs(20));
    assert_eq!(mails.len(), 1, "{}", app.worker_log());
    assert_eq!(mails[0].recipients, vec!["ada@example.com".to_owned()]);
    let parsed = mails[0].parsed();
    assert!(
        parsed.subject.contains("Confirm your email"),
        "{}",
        parsed.subject
    );
    assert!(
        parsed
            .text
            .contains(&format!("{}/verify-email?token=", app.url)),
        "{}",
        parsed.text
    );
    let token = token_from_link(&parsed.text);
    assert_eq!(token.len(), 64);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM one_time_tokens WHERE token_hash = $1")
            .bind(Sha256::digest(token.as_bytes()).to_vec())
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(stored, 1, "only the hash is stored");
    let (status, user) = app
        .call(
            "POST",
            "/api/v1/auth/verify-email",
            None,
            Some(&json!({"token": token})),
        )
        .await;
    assert_eq!(
        (status, user["email_verified"].as_bool()),
        (200, Some(true)),
        "{user}"
    );
    let (status, again) = app
        .call(
            "POST",
            "/api/v1/auth/verify-email",
            None,
            Some(&json!({"token": token})),
        )
        .await;
    assert_eq!(status, 422, "{again}");

    let (status, me) = app
        .call("GET", "/api/v1/me", Some(&access(&registered)), None)
        .await;
    assert_eq!((status, me["email_verified"].as_bool()), (200, Some(true)));

    // Wrong password and unknown account answer alike.
    let (s1, wrong_password) = login(&app, "ada@example.com", "not the password").await;
    let (s2, unknown) = login(&app, "nobody@example.com", "not the password").await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(wrong_password, unknown);
    assert_eq!(wrong_password["error"]["code"], "invalid_credentials");

    let (status, second) = login(&app, "ADA@example.com", "correct horse battery").await;
    assert_eq!(status, 200, "{second}");
    let (status, sessions) = app
        .call("GET", "/api/v1/auth/sessions", Some(&access(&second)), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(sessions["next_cursor"], Value::Null, "{sessions}");
    let sessions = sessions["items"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);

    // Rotation: each refresh token works once; reuse revokes the whole session.
    let (status, rotated) = app
        .call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(&json!({"refresh_token": refresh_token(&second)})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(refresh_token(&rotated), refresh_token(&second));
    let (status, reused) = app
        .call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(&json!({"refresh_token": refresh_token(&second)})),
        )
        .await;
    assert_eq!(
        (status, reused["error"]["code"].as_str()),
        (401, Some("refresh_token_reused"))
    );
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(&json!({"refresh_token": refresh_token(&rotated)})),
        )
        .await;
    assert_eq!(status, 401, "the thief's fresh token dies with the session");
    let (status, body) = app
        .call("GET", "/api/v1/me", Some(&access(&rotated)), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("session_revoked"))
    );

    // The first session is untouched; logging out ends it at once.
    let first = access(&registered);
    assert_eq!(
        app.call("GET", "/api/v1/me", Some(&first), None).await.0,
        200
    );
    let (status, _) = app
        .call("POST", "/api/v1/auth/logout", Some(&first), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        app.call("GET", "/api/v1/me", Some(&first), None).await.0,
        401
    );

    let events: Vec<String> = sqlx::query_scalar("SELECT event FROM audit_log ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    for event in [
        "register",
        "email_verified",
        "login_failed",
        "login",
        "refresh_token_reuse",
        "logout",
    ] {
        assert!(
            events.iter().any(|e| e == event),
            "{event} missing from {events:?}"
        );
    }
}

#[tokio::test]
async fn registration_rejects_bad_input_with_every_problem_at_once() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let (status, body) = app
        .call(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(&json!({"email": "not-an-email", "password": "password1", "full_name": "x".repeat(101), "role": "admin"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let fields = body["error"]["fields"].as_object().unwrap();
    for field in ["email", "password", "full_name", "role"] {
        assert!(fields.contains_key(field), "{field}: {body}");
    }

    app.register("grace@example.com", "instructor").await;
    let (status, body) = app
        .call(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(&json!({"email": "GRACE@example.com", "password": "another good one", "full_name": "G"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("email_taken"))
    );

    let (status, body) = app
        .call(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(&json!({"email": "a@example.com"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed_request")),
        "{body}"
    );
    let (status, body) = app
        .call(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(&json!({"email": 5, "password": [], "full_name": "x"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed_request"))
    );
}

fn sign(claims: &Value, secret: &str, kid: Option<String>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid;
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn kid_of(secret: &str) -> String {
    hex::encode(&Sha256::digest(secret.as_bytes())[..8])
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

#[tokio::test]
async fn forged_expired_and_unsigned_tokens_are_refused() {
    const OLD: &str = "the-previous-signing-secret-0123456789abcdef";
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![("JWT_PREVIOUS_SECRETS".into(), OLD.into())],
    })
    .await;
    let body = app.register("linus@example.com", "student").await;
    let claims_of = |token: &str| -> Value {
        let payload = token.split('.').nth(1).unwrap();
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let mut claims = claims_of(&access(&body));
    assert_eq!(claims["role"], "student");
    assert!(claims["jti"].is_string() && claims["sid"].is_string());

    let me = |token: String| {
        let app = &app;
        async move { app.call("GET", "/api/v1/me", Some(&token), None).await }
    };
    // Signed with the previous key (rotation): accepted.
    assert_eq!(me(sign(&claims, OLD, Some(kid_of(OLD)))).await.0, 200);
    // Signed with a key Lectern does not know, or with the right key under another kid.
    let (status, err) = me(sign(
        &claims,
        "some-other-secret-0123456789abcdef0123",
        Some(kid_of(JWT_SECRET)),
    ))
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    assert_eq!(
        me(sign(
            &claims,
            "x-other-secret-0123456789abcdef0123456",
            None
        ))
        .await
        .0,
        401
    );
    // Escalating the role in the claims breaks the signature.
    let mut admin = claims.clone();
    admin["role"] = json!("admin");
    let token = access(&body);
    let pieces: Vec<&str> = token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        pieces[0],
        b64(&serde_json::to_vec(&admin).unwrap()),
        pieces[2]
    );
    assert_eq!(me(tampered).await.0, 401);
    // alg: none.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(&serde_json::to_vec(&claims).unwrap())
    );
    assert_eq!(me(none).await.0, 401);
    // Expired.
    let now = chrono::Utc::now().timestamp();
    claims["iat"] = json!(now - 3600);
    claims["exp"] = json!(now - 60);
    let (status, err) = me(sign(&claims, JWT_SECRET, Some(kid_of(JWT_SECRET)))).await;
    assert_eq!(status, 401);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{err}"
    );
    // Garbage.
    assert_eq!(me("not.a.jwt".into()).await.0, 401);
}

#[tokio::test]
async fn password_reset_changes_the_password_and_ends_every_session() {
    let app = TestApp::spawn().await;
    let body = app.register("margaret@example.com", "instructor").await;
    app.smtp.wait_for(1, Duration::from_secs(20));

    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/password-reset",
            None,
            Some(&json!({"email": "nobody@example.com"})),
        )
        .await;
    assert_eq!(status, 202, "unknown addresses get the same answer");
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/password-reset",
            None,
            Some(&json!({"email": "Margaret@example.com"})),
        )
        .await;
    assert_eq!(status, 202);
    let mails = app.smtp.wait_for(2, Duration::from_secs(20));
    assert_eq!(
        mails.len(),
        2,
        "one verification, one reset: {}",
        app.worker_log()
    );
    let reset = mails[1].parsed();
    assert!(reset.subject.contains("Reset your"), "{}", reset.subject);
    let token = token_from_link(&reset.text);

    // A weak password is refused and the token stays usable.
    let (status, err) = app
        .call(
            "POST",
            "/api/v1/auth/password-reset/confirm",
            None,
            Some(&json!({"token": token, "password": "12345678"})),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert!(err["error"]["fields"]["password"].is_array());
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/password-reset/confirm",
            None,
            Some(&json!({"token": token, "password": "a brand new passphrase"})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/password-reset/confirm",
            None,
            Some(&json!({"token": token, "password": "yet another passphrase"})),
        )
        .await;
    assert_eq!(status, 422, "single use");

    assert_eq!(
        app.call("GET", "/api/v1/me", Some(&access(&body)), None)
            .await
            .0,
        401
    );
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(&json!({"refresh_token": refresh_token(&body)})),
        )
        .await;
    assert_eq!(status, 401, "old refresh tokens are dead");
    assert_eq!(
        login(&app, "margaret@example.com", "correct horse battery")
            .await
            .0,
        401
    );
    assert_eq!(
        login(&app, "margaret@example.com", "a brand new passphrase")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn repeated_failures_lock_the_account_and_limits_answer_429() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![("LOGIN_LIMIT_PER_IP".into(), "8".into())],
    })
    .await;
    app.register("lock@example.com", "student").await;
    for _ in 0..5 {
        assert_eq!(
            login(&app, "lock@example.com", "wrong wrong wrong").await.0,
            401
        );
    }
    // Locked: even the right password waits.
    let (status, err, headers) = app
        .raw(
            app.http
                .post(format!("{}/api/v1/auth/login", app.url))
                .json(&json!({"email": "lock@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{err}"
    );
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after > 800 && retry_after <= 900, "{retry_after}");
    let lockouts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE event = 'lockout'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(lockouts, 1);

    // Per-IP limit: 8 attempts a minute (6 made so far), then 429 whatever the account.
    for _ in 0..2 {
        let (status, err) = login(&app, "someone@example.com", "whatever it is").await;
        assert_eq!(status, 401, "{err}");
    }
    let (status, err) = login(&app, "lock@example.com", "correct horse battery").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
}

#[tokio::test]
async fn rate_limits_can_be_turned_off() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![
            ("RATE_LIMITS".into(), "off".into()),
            ("LOGIN_LIMIT_PER_IP".into(), "1".into()),
        ],
    })
    .await;
    for _ in 0..4 {
        assert_eq!(
            login(&app, "ghost@example.com", "whatever it is").await.0,
            401
        );
    }
}

#[tokio::test]
async fn roles_admins_and_ownership() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let student = app.register("student@example.com", "student").await;
    let other = app.register("other@example.com", "student").await;

    // A student is no admin.
    let (status, body) = app
        .call(
            "GET",
            "/api/v1/admin/audit-log",
            Some(&access(&student)),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/admin/email/test",
            Some(&access(&student)),
            Some(&json!({"to": "a@example.com"})),
        )
        .await;
    assert_eq!(status, 403);

    // Another user's session is not there.
    let (_, sessions) = app
        .call("GET", "/api/v1/auth/sessions", Some(&access(&other)), None)
        .await;
    let other_session = sessions["items"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/auth/sessions/{other_session}"),
            Some(&access(&student)),
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        app.call("GET", "/api/v1/me", Some(&access(&other)), None)
            .await
            .0,
        200
    );
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/auth/sessions/{other_session}"),
            Some(&access(&other)),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        app.call("GET", "/api/v1/me", Some(&access(&other)), None)
            .await
            .0,
        401
    );

    // A suspended account is refused at login and its live tokens stop working.
    sqlx::query("UPDATE users SET status = 'suspended' WHERE email = 'student@example.com'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        app.call("GET", "/api/v1/me", Some(&access(&student)), None)
            .await
            .0,
        401
    );
    let (status, body) = login(&app, "student@example.com", "correct horse battery").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("account_suspended"))
    );

    // The first admin comes from the command line, password on standard input.
    let (status, out) = run_with_stdin(
        "lectern-api",
        &[
            "create-admin",
            "--email",
            "root@example.com",
            "--name",
            "Root",
        ],
        &app.env,
        "an admin passphrase\n",
    );
    assert!(status.success(), "{out}");
    let (status, out) = run_with_stdin(
        "lectern-api",
        &["create-admin", "--email", "weak@example.com"],
        &app.env,
        "123\n",
    );
    assert!(!status.success(), "weak password refused: {out}");
    let (status, admin) = login(&app, "root@example.com", "an admin passphrase").await;
    assert_eq!(
        (status, admin["user"]["role"].as_str()),
        (200, Some("admin"))
    );
    let (status, page) = app
        .call(
            "GET",
            "/api/v1/admin/audit-log?limit=2",
            Some(&access(&admin)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (status, next) = app
        .call(
            "GET",
            &format!("/api/v1/admin/audit-log?limit=2&cursor={cursor}"),
            Some(&access(&admin)),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        next["items"][0]["id"].as_i64().unwrap() < page["items"][1]["id"].as_i64().unwrap() + 1
    );

    // Only an admin creates admins through the API.
    let (status, created) = app
        .call(
            "POST",
            "/api/v1/auth/register",
            Some(&access(&admin)),
            Some(&json!({"email": "second-admin@example.com", "password": "a long admin secret", "full_name": "Two", "role": "admin"})),
        )
        .await;
    assert_eq!(
        (status, created["user"]["role"].as_str()),
        (201, Some("admin")),
        "{created}"
    );
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/register",
            Some(ADMIN_TOKEN),
            Some(&json!({"email": "third-admin@example.com", "password": "a long admin secret", "full_name": "Three", "role": "admin"})),
        )
        .await;
    assert_eq!(status, 201, "the operator token is an admin too");
}

#[tokio::test]
async fn profile_preferences_and_follows() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![("TRUSTED_PROXIES".into(), "127.0.0.1".into())],
    })
    .await;
    let student = app.register("fan@example.com", "student").await;
    let instructor = app.register("teacher@example.com", "instructor").await;
    let token = access(&student);

    let (status, me) = app
        .call(
            "PATCH",
            "/api/v1/me",
            Some(&token),
            Some(&json!({"full_name": "  Fan Person ", "bio": "Learning Rust", "notification_preferences": {"email": false}})),
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["full_name"], "Fan Person");
    assert_eq!(
        me["notification_preferences"],
        json!({"email": false, "in_app": true})
    );
    let (status, err) = app
        .call(
            "PATCH",
            "/api/v1/me",
            Some(&token),
            Some(&json!({"full_name": "", "bio": "x".repeat(2001)})),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        err["error"]["fields"]["full_name"].is_array() && err["error"]["fields"]["bio"].is_array()
    );
    let (status, _) = app
        .call(
            "PATCH",
            "/api/v1/me",
            Some(&token),
            Some(&json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, 400, "unknown fields such as role are refused");

    let teacher_id = instructor["user"]["id"].as_str().unwrap();
    let student_id = student["user"]["id"].as_str().unwrap();
    for _ in 0..2 {
        let (status, _) = app
            .call(
                "POST",
                &format!("/api/v1/users/{teacher_id}/follow"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, 204, "idempotent");
    }
    let follows: i64 = sqlx::query_scalar("SELECT count(*) FROM follows")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(follows, 1);
    let (status, _) = app
        .call(
            "POST",
            &format!("/api/v1/users/{student_id}/follow"),
            Some(&access(&instructor)),
            None,
        )
        .await;
    assert_eq!(status, 404, "only instructors can be followed");
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/users/{teacher_id}/follow"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 204);

    // X-Forwarded-For is believed from a trusted proxy (127.0.0.1 here).
    let (status, _, _) = app
        .raw(
            app.http
                .post(format!("{}/api/v1/auth/login", app.url))
                .header("x-forwarded-for", "203.0.113.7")
                .header("user-agent", "LecternTest/1.0")
                .json(&json!({"email": "fan@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, 200);
    let (ip, agent): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT last_login_ip, last_login_user_agent FROM users WHERE email = 'fan@example.com'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(agent.as_deref(), Some("LecternTest/1.0"));
}

#[tokio::test]
async fn forwarded_for_is_ignored_without_a_trusted_proxy() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    app.register("plain@example.com", "student").await;
    let (status, _, _) = app
        .raw(
            app.http
                .post(format!("{}/api/v1/auth/login", app.url))
                .header("x-forwarded-for", "203.0.113.7")
                .json(&json!({"email": "plain@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, 200);
    let ip: Option<String> =
        sqlx::query_scalar("SELECT last_login_ip FROM users WHERE email = 'plain@example.com'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(ip.as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn a_user_exports_their_data_and_deletes_their_account() {
    let app = TestApp::spawn().await;
    let body = app.register("privacy@example.com", "student").await;
    let token = access(&body);
    app.smtp.wait_for(1, Duration::from_secs(20));

    let (status, started) = app
        .call("POST", "/api/v1/me/export", Some(&token), None)
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["job"]["kind"], "export_user_data");
    let job_id = started["job"]["id"].as_str().unwrap();
    // The user sees their own job.
    let (status, job) = app
        .call("GET", &format!("/api/v1/jobs/{job_id}"), Some(&token), None)
        .await;
    assert_eq!(status, 200, "{job}");
    app.wait_for_job(job_id, "succeeded", Duration::from_secs(30))
        .await;

    let mails = app.smtp.wait_for(2, Duration::from_secs(10));
    let mail = mails[1].parsed();
    assert!(
        mail.subject.contains("data export is ready"),
        "{}",
        mail.subject
    );
    let link = mail
        .text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("http") && l.contains("exports/"))
        .expect("a link to the archive")
        .to_owned();
    let archive: Value = reqwest::get(&link).await.unwrap().json().await.unwrap();
    assert_eq!(archive["profile"]["email"], "privacy@example.com");
    assert!(archive["profile"].get("password_hash").is_none());
    assert_eq!(archive["sessions"].as_array().unwrap().len(), 1);
    assert!(
        archive["security_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "register")
    );

    // Another user cannot see that job.
    let other = app.register("nosy@example.com", "student").await;
    let (status, _) = app
        .call(
            "GET",
            &format!("/api/v1/jobs/{job_id}"),
            Some(&access(&other)),
            None,
        )
        .await;
    assert_eq!(status, 404);

    let (status, err) = app
        .call(
            "DELETE",
            "/api/v1/me",
            Some(&token),
            Some(&json!({"password": "not it at all"})),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    let (status, _) = app
        .call(
            "DELETE",
            "/api/v1/me",
            Some(&token),
            Some(&json!({"password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        app.call("GET", "/api/v1/me", Some(&token), None).await.0,
        401
    );
    assert_eq!(
        login(&app, "privacy@example.com", "correct horse battery")
            .await
            .0,
        401
    );
    let (email, name, status): (String, String, String) =
        sqlx::query_as("SELECT email, full_name, status FROM users WHERE id = $1::uuid")
            .bind(body["user"]["id"].as_str().unwrap())
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(email.ends_with("@deleted.invalid"));
    assert_eq!(
        (name.as_str(), status.as_str()),
        ("Deleted user", "deleted")
    );
    app.register("privacy@example.com", "student").await;
}

#[tokio::test]
async fn logout_all_ends_every_session_of_the_account_only() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let first = app.register("many@example.com", "student").await;
    let other = app.register("bystander@example.com", "student").await;
    let (_, second) = login(&app, "many@example.com", "correct horse battery").await;
    let (_, third) = login(&app, "many@example.com", "correct horse battery").await;
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/logout",
            Some(&access(&second)),
            Some(&json!({"all": true})),
        )
        .await;
    assert_eq!(status, 204);
    for body in [&first, &second, &third] {
        assert_eq!(
            app.call("GET", "/api/v1/me", Some(&access(body)), None)
                .await
                .0,
            401
        );
        let (status, _) = app
            .call(
                "POST",
                "/api/v1/auth/refresh",
                None,
                Some(&json!({"refresh_token": refresh_token(body)})),
            )
            .await;
        assert_eq!(status, 401);
    }
    assert_eq!(
        app.call("GET", "/api/v1/me", Some(&access(&other)), None)
            .await
            .0,
        200
    );
    let (status, _) = app.call("POST", "/api/v1/auth/logout", None, None).await;
    assert_eq!(status, 401);
}

/// The device cookie a sign-in set (`lectern_device=...`), as a `Cookie` header value.
fn device_cookie(headers: &reqwest::header::HeaderMap) -> String {
    let set = headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("lectern_device="))
        .unwrap_or_else(|| panic!("no device cookie in {headers:?}"));
    assert!(set.contains("HttpOnly"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

/// Registers through the API and returns the body and the device cookie it set.
async fn register_with_device(app: &TestApp, email: &str) -> (Value, String) {
    let (status, body, headers) = app
        .raw(
            app.http
                .post(format!("{}/api/v1/auth/register", app.url))
                .json(&json!({
                    "email": email, "password": "correct horse battery", "full_name": "Test User"
                })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    (body, device_cookie(&headers))
}

/// A login from a client with `cookie` (a `Cookie` header) and `forwarded` (`X-Forwarded-For`).
async fn login_from(
    app: &TestApp,
    email: &str,
    password: &str,
    cookie: Option<&str>,
    forwarded: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = app
        .http
        .post(format!("{}/api/v1/auth/login", app.url))
        .json(&json!({"email": email, "password": password}));
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    if let Some(ip) = forwarded {
        req = req.header("x-forwarded-for", ip);
    }
    app.raw(req).await
}

#[tokio::test]
async fn an_attacker_cannot_lock_the_owner_out_of_their_own_device() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let (_, device) = register_with_device(&app, "victim@example.com").await;
    let (_, other_device) = register_with_device(&app, "attacker@example.com").await;

    // A stranger guesses: five failures lock the account against this client, and the bound
    // per account (10 failures in 15 minutes) soon refuses every client without a device cookie.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            login_from(&app, "victim@example.com", "wrong wrong wrong", None, None)
                .await
                .0,
        );
    }
    assert_eq!(&statuses[..5], [401; 5]);
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    let (status, _, _) = login_from(
        &app,
        "victim@example.com",
        "correct horse battery",
        None,
        None,
    )
    .await;
    assert_eq!(
        status, 429,
        "the failing client is held back even with the right password"
    );
    // Another account's device cookie, or a forged one, is no better.
    let (status, _, _) = login_from(
        &app,
        "victim@example.com",
        "correct horse battery",
        Some(&other_device),
        None,
    )
    .await;
    assert_eq!(status, 429);
    let last = if device.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &device[..device.len() - 1]);
    let (status, _, _) = login_from(
        &app,
        "victim@example.com",
        "correct horse battery",
        Some(&forged),
        None,
    )
    .await;
    assert_eq!(status, 429);

    // The owner's device, from an earlier sign-in, gets in with the right password.
    let (status, body, headers) = login_from(
        &app,
        "victim@example.com",
        "correct horse battery",
        Some(&device),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        device_cookie(&headers),
        device,
        "the device keeps its cookie"
    );

    // A device that fails on its own (a stolen cookie) loses its standing after five failures:
    // then it is held back with every other client while the account is under attack.
    for _ in 0..5 {
        let (status, _, _) = login_from(
            &app,
            "victim@example.com",
            "wrong wrong wrong",
            Some(&device),
            None,
        )
        .await;
        assert_eq!(status, 401);
    }
    for _ in 0..5 {
        login_from(&app, "victim@example.com", "wrong wrong wrong", None, None).await;
    }
    let (status, _, _) = login_from(
        &app,
        "victim@example.com",
        "correct horse battery",
        Some(&device),
        None,
    )
    .await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn a_clean_address_gets_in_and_an_expired_lock_starts_counting_again() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![
            ("TRUSTED_PROXIES".into(), "127.0.0.1/32".into()),
            ("LOCKOUT_THRESHOLD".into(), "3".into()),
            ("LOCKOUT_SECS".into(), "2".into()),
        ],
    })
    .await;
    app.register("owner@example.com", "student").await;
    let attacker = Some("203.0.113.7");
    for _ in 0..3 {
        let (status, _, _) = login_from(
            &app,
            "owner@example.com",
            "wrong wrong wrong",
            None,
            attacker,
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, _, _) = login_from(
        &app,
        "owner@example.com",
        "correct horse battery",
        None,
        attacker,
    )
    .await;
    assert_eq!(status, 429, "locked against the failing address");
    // Another address with no failures has its password checked, lock or not.
    let (status, body, _) = login_from(
        &app,
        "owner@example.com",
        "correct horse battery",
        None,
        Some("198.51.100.2"),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Lock again, let it expire: one wrong guess afterwards does not lock the account again.
    for _ in 0..3 {
        login_from(
            &app,
            "owner@example.com",
            "wrong wrong wrong",
            None,
            attacker,
        )
        .await;
    }
    let (status, _, _) = login_from(
        &app,
        "owner@example.com",
        "correct horse battery",
        None,
        attacker,
    )
    .await;
    assert_eq!(status, 429);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _, _) = login_from(
        &app,
        "owner@example.com",
        "wrong wrong wrong",
        None,
        attacker,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body, _) = login_from(
        &app,
        "owner@example.com",
        "correct horse battery",
        None,
        attacker,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let failed: i32 =
        sqlx::query_scalar("SELECT failed_logins FROM users WHERE email = 'owner@example.com'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(failed, 0);
}

#[tokio::test]
async fn registration_and_password_checks_are_rate_limited() {
    let app = TestApp::spawn_with(Options {
        no_worker: true,
        env: vec![("REGISTER_LIMIT_PER_IP".into(), "3".into())],
    })
    .await;
    let first = app.register("one@example.com", "student").await;
    app.register("two@example.com", "student").await;
    app.register("three@example.com", "student").await;
    let (status, err, headers) = app
        .raw(app.http.post(format!("{}/api/v1/auth/register", app.url)).json(&json!({
            "email": "four@example.com", "password": "correct horse battery", "full_name": "Four"
        })))
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{err}"
    );
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after > 3500 && retry_after <= 3600, "{retry_after}");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(users, 3, "the refused registration wrote nothing");
    // An admin creating accounts is not limited.
    let (status, body) = app
        .post_as_admin(
            "/api/v1/auth/register",
            &json!({"email": "five@example.com", "password": "correct horse battery", "full_name": "Five"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // Deleting the account checks the password at most five times per 15 minutes.
    let token = access(&first);
    for _ in 0..5 {
        let (status, body) = app
            .call(
                "DELETE",
                "/api/v1/me",
                Some(&token),
                Some(&json!({"password": "not my password"})),
            )
            .await;
        assert_eq!(status, 422, "{body}");
    }
    let (status, err, headers) = app
        .raw(
            app.http
                .delete(format!("{}/api/v1/me", app.url))
                .bearer_auth(&token)
                .json(&json!({"password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, 429, "{err}");
    assert!(headers.contains_key("retry-after"));
    let (status, _) = app.call("GET", "/api/v1/me", Some(&token), None).await;
    assert_eq!(status, 200, "the account is still there");
}

/// Asks for a reset link for `email` from a client with `cookie`.
async fn request_reset(app: &TestApp, email: &str, cookie: Option<&str>) -> u16 {
    let mut req = app
        .http
        .post(format!("{}/api/v1/auth/password-reset", app.url))
        .json(&json!({ "email": email }));
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    app.raw(req).await.0
}

#[tokio::test]
async fn strangers_reset_requests_never_use_up_the_owners() {
    let app = TestApp::spawn_with_env(&[
        ("RESET_LIMIT_PER_ADDRESS", "4"),
        ("RESET_LIMIT_PER_IP", "8"),
    ])
    .await;
    let (_, device) = register_with_device(&app, "owner@example.com").await;
    assert_eq!(app.smtp.wait_for(1, Duration::from_secs(20)).len(), 1);

    // A stranger asks for the owner's link until the per-address flood cap refuses.
    for _ in 0..4 {
        assert_eq!(request_reset(&app, "owner@example.com", None).await, 202);
    }
    assert_eq!(request_reset(&app, "owner@example.com", None).await, 429);
    // The owner's own client still gets its mail.
    assert_eq!(
        request_reset(&app, "owner@example.com", Some(&device)).await,
        202
    );
    let mails = app.smtp.wait_for(6, Duration::from_secs(30));
    assert_eq!(mails.len(), 6, "{}", app.worker_log());

    // The stranger's address has its own bound, whatever account it asks for.
    for _ in 0..3 {
        assert_eq!(request_reset(&app, "nobody@example.com", None).await, 202);
    }
    assert_eq!(request_reset(&app, "nobody@example.com", None).await, 429);
}

/// Confirms a reset with `token`; returns the status.
async fn confirm_reset(app: &TestApp, token: &str, password: &str) -> u16 {
    app.call(
        "POST",
        "/api/v1/auth/password-reset/confirm",
        None,
        Some(&json!({"token": token, "password": password})),
    )
    .await
    .0
}

#[tokio::test]
async fn a_reset_or_a_password_change_voids_older_reset_links_and_no_job_holds_a_token() {
    let app = TestApp::spawn().await;
    let (_, device) = register_with_device(&app, "grace@example.com").await;
    let mails = app.smtp.wait_for(1, Duration::from_secs(20));
    let verify = token_from_link(&mails[0].parsed().text);
    let mut tokens = vec![verify.clone()];
    let mut reset_link = |n: usize| {
        let mails = app.smtp.wait_for(n, Duration::from_secs(20));
        assert_eq!(mails.len(), n, "{}", app.worker_log());
        let token = token_from_link(&mails[n - 1].parsed().text);
        tokens.push(token.clone());
        token
    };

    assert_eq!(
        request_reset(&app, "grace@example.com", Some(&device)).await,
        202
    );
    let older = reset_link(2);
    assert_eq!(
        request_reset(&app, "grace@example.com", Some(&device)).await,
        202
    );
    let newer = reset_link(3);
    assert_ne!(older, newer);
    assert_eq!(
        confirm_reset(&app, &newer, "a brand new passphrase").await,
        204
    );
    assert_eq!(
        confirm_reset(&app, &older, "an attackers passphrase").await,
        422,
        "a successful reset voids the older link"
    );

    // A password change voids the links asked for before it.
    let (status, body, _) = login_from(
        &app,
        "grace@example.com",
        "a brand new passphrase",
        Some(&device),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, other) = login(&app, "grace@example.com", "a brand new passphrase").await;
    assert_eq!(status, 200, "{other}");
    assert_eq!(
        request_reset(&app, "grace@example.com", Some(&device)).await,
        202
    );
    let pending = reset_link(4);
    let (status, err) = app
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&access(&body)),
            Some(&json!({"password": "not it at all", "new_password": "third passphrase here"})),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    let (status, err) = app
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&access(&body)),
            Some(&json!({"password": "a brand new passphrase", "new_password": "third passphrase here"})),
        )
        .await;
    assert_eq!(status, 204, "{err}");
    assert_eq!(
        confirm_reset(&app, &pending, "an attackers passphrase").await,
        422
    );
    assert_eq!(
        login(&app, "grace@example.com", "third passphrase here")
            .await
            .0,
        200
    );
    assert_eq!(
        app.call("GET", "/api/v1/me", Some(&access(&other)), None)
            .await
            .0,
        401,
        "the change ended the other sessions"
    );
    assert_eq!(
        app.call("GET", "/api/v1/me", Some(&access(&body)), None)
            .await
            .0,
        200,
        "but not the one that made it"
    );

    // The mailed verification link still works, and no stored job shows a token.
    let (status, user) = app
        .call(
            "POST",
            "/api/v1/auth/verify-email",
            None,
            Some(&json!({"token": verify})),
        )
        .await;
    assert_eq!(
        (status, user["email_verified"].as_bool()),
        (200, Some(true))
    );
    let jobs: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE kind = 'send_account_link' ORDER BY id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(jobs.len(), 4);
    for id in jobs {
        let (status, job) = app.get_as_admin(&format!("/api/v1/admin/jobs/{id}")).await;
        assert_eq!(status, 200, "{job}");
        assert!(job["payload"]["token_id"].is_string(), "{job}");
        let shown = job.to_string();
        for token in &tokens {
            assert!(!shown.contains(token.as_str()), "{shown}");
        }
    }
    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM jobs")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    for p in payloads {
        assert!(!p.contains("token="), "{p}");
    }
    let log = format!("{}{}", app.worker_log(), app.api.output());
    for token in &tokens {
        assert!(!log.contains(token.as_str()), "a token in the logs");
    }
}

//! Real-time delivery over WebSockets across API processes: a notification created by the worker
//! while the user is connected to another API process arrives on their socket within a second.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use lectern_tests::fixtures::published_course_with_videos;
use lectern_tests::{Proc, TestApp, free_port};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(base: &str, token: &str) -> Socket {
    let url = format!(
        "{}/api/v1/ws?token={token}",
        base.replace("http://", "ws://")
    );
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket upgrade")
        .0
}

/// The next text message as JSON, or the close code.
async fn next(ws: &mut Socket) -> Result<Value, u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => {
                return Err(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// The close code after an `error` message.
async fn closed_with(ws: &mut Socket) -> u16 {
    loop {
        match next(ws).await {
            Ok(v) if v["type"] == "error" => continue,
            Ok(v) => panic!("expected a close, got {v}"),
            Err(code) => return code,
        }
    }
}

#[tokio::test]
async fn notifications_reach_a_socket_on_another_api_process_within_a_second() {
    let app = TestApp::spawn().await;
    // A second API process behind the same "load balancer": same database, Redis and storage.
    let port = free_port();
    let mut env = app.env.clone();
    env.insert("PORT".into(), port.to_string());
    let second = Proc::spawn("lectern-api", &[], &env, app.dir.join("api-2.log"));
    let second_url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while app
        .http
        .get(format!("{second_url}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{}", second.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let teacher = app.register("teacher@example.com", "instructor").await;
    let teacher_token = teacher["access_token"].as_str().unwrap().to_owned();
    let teacher_id: Uuid = teacher["user"]["id"].as_str().unwrap().parse().unwrap();
    let (course, _) =
        published_course_with_videos(&app.db.pool, teacher_id, "Live", "0", 1, 60.0).await;

    // The instructor listens on the first process.
    let mut ws = open(&app.url, &teacher_token).await;
    let ready = next(&mut ws).await.unwrap();
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["unread"], 0);

    // A student enrolls through the second process; the worker stores the instructor's
    // notification and publishes it.
    let student = app.register("student@example.com", "student").await;
    let s = student["access_token"].as_str().unwrap();
    let res = app
        .http
        .post(format!("{second_url}/api/v1/courses/{course}/enroll"))
        .bearer_auth(s)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let event = next(&mut ws).await.unwrap();
    let arrived = chrono::Utc::now();
    assert_eq!(event["type"], "notification", "{event}");
    assert_eq!(event["notification"]["type"], "new_enrollment");
    assert_eq!(
        event["notification"]["data"]["course_id"],
        course.to_string()
    );
    let created: chrono::DateTime<chrono::Utc> = event["notification"]["created_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let latency = arrived - created;
    assert!(
        latency < chrono::Duration::seconds(1),
        "arrived {latency} after it was stored"
    );
    // It is the stored notification: a client that missed it finds it in the list.
    let (_, inbox) = app
        .call("GET", "/api/v1/notifications", Some(&teacher_token), None)
        .await;
    assert_eq!(inbox["items"][0]["id"], event["notification"]["id"]);
    // The socket answers pings.
    ws.send(Message::Ping(vec![1, 2, 3].into())).await.unwrap();

    // Bad tokens: upgraded, then closed with 4401 and a reason.
    let mut bad = open(&app.url, "not-a-token").await;
    assert_eq!(closed_with(&mut bad).await, 4401);
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/logout",
            Some(s),
            Some(&serde_json::json!({})),
        )
        .await;
    assert_eq!(status, 204);
    let mut revoked = open(&second_url, s).await;
    assert_eq!(closed_with(&mut revoked).await, 4401);

    // At most five sockets per user per process; the sixth is closed with 4429.
    let mut more = Vec::new();
    for _ in 0..4 {
        let mut w = open(&app.url, &teacher_token).await;
        assert_eq!(next(&mut w).await.unwrap()["type"], "ready");
        more.push(w);
    }
    let mut sixth = open(&app.url, &teacher_token).await;
    assert_eq!(closed_with(&mut sixth).await, 4429);
    // Closing one frees a slot.
    more.pop().unwrap().close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = open(&app.url, &teacher_token).await;
    assert_eq!(next(&mut again).await.unwrap()["type"], "ready");
    drop(second);
}

/// The reason of the `error` message and the close code that follows it.
async fn refusal(ws: &mut Socket) -> (String, u16) {
    let error = next(ws).await.expect("an error message before the close");
    assert_eq!(error["type"], "error", "{error}");
    let reason = error["reason"].as_str().unwrap_or_default().to_owned();
    let code = next(ws).await.expect_err("a close after the error");
    (reason, code)
}

/// The access token's claims with `exp` in the past, signed with the API's key.
fn expired_copy_of(token: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let mut claims: Value = serde_json::from_slice(&bytes).unwrap();
    let now = chrono::Utc::now().timestamp();
    claims["iat"] = serde_json::json!(now - 7200);
    claims["exp"] = serde_json::json!(now - 120);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(hex::encode(
        &sha2::Sha256::digest(lectern_tests::JWT_SECRET.as_bytes())[..8],
    ));
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(lectern_tests::JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn an_expired_or_missing_token_is_closed_with_4401() {
    let app = lectern_tests::TestApp::spawn_with(lectern_tests::Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let (_, token) = lectern_tests::fixtures::mint_users(&app.db.pool, 1, "student")
        .await
        .remove(0);
    // The same session's token, valid: the socket opens.
    let mut ok = open(&app.url, &token).await;
    assert_eq!(next(&mut ok).await.unwrap()["type"], "ready");

    // Expired (same session, same signature key): refused with 4401 and the reason.
    let mut expired = open(&app.url, &expired_copy_of(&token)).await;
    let (reason, code) = refusal(&mut expired).await;
    assert_eq!(code, 4401);
    assert!(reason.contains("expired"), "{reason}");

    // No token at all, neither in the query nor in a header.
    let url = format!("{}/api/v1/ws", app.url.replace("http://", "ws://"));
    let (mut anonymous, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (reason, code) = refusal(&mut anonymous).await;
    assert_eq!(code, 4401);
    assert!(reason.contains("token"), "{reason}");
}

/// Waits at most a second for `ws` to be closed by the server; returns the close code.
async fn closed_within_a_second(ws: &mut Socket) -> u16 {
    let started = Instant::now();
    let code = tokio::time::timeout(Duration::from_secs(1), closed_with(ws))
        .await
        .expect("the socket closed within a second");
    assert!(started.elapsed() <= Duration::from_secs(1));
    code
}

/// Asserts that `ws` stays open (nothing arrives) for a moment.
async fn stays_open(ws: &mut Socket) {
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ws.next())
            .await
            .is_err(),
        "the socket should stay open"
    );
}

/// Signs in and returns (access token, session id).
async fn sign_in(app: &TestApp, email: &str, password: &str) -> (String, String) {
    let (status, body) = app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(&serde_json::json!({"email": email, "password": password})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (_, sessions) = app
        .call("GET", "/api/v1/auth/sessions", Some(&token), None)
        .await;
    let session = sessions["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (token, session)
}

async fn ready_socket(base: &str, token: &str) -> Socket {
    let mut ws = open(base, token).await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "ready");
    ws
}

#[tokio::test]
async fn sockets_close_within_a_second_when_their_session_ends_on_any_process() {
    let app = TestApp::spawn().await;
    let port = free_port();
    let mut env = app.env.clone();
    env.insert("PORT".into(), port.to_string());
    let second = Proc::spawn("lectern-api", &[], &env, app.dir.join("api-2.log"));
    let second_url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while app
        .http
        .get(format!("{second_url}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{}", second.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pw = "correct horse battery";
    app.register("ws@example.com", "student").await;
    app.smtp.wait_for(1, Duration::from_secs(20));

    // Logout: the socket on the other process closes; another session's socket stays.
    let (a, _) = sign_in(&app, "ws@example.com", pw).await;
    let (b, b_session) = sign_in(&app, "ws@example.com", pw).await;
    let mut a_ws = ready_socket(&second_url, &a).await;
    let mut b_ws = ready_socket(&second_url, &b).await;
    assert_eq!(
        app.call("POST", "/api/v1/auth/logout", Some(&a), None)
            .await
            .0,
        204
    );
    assert_eq!(closed_within_a_second(&mut a_ws).await, 4401);
    stays_open(&mut b_ws).await;

    // Revocation of one session from another.
    let (c, _) = sign_in(&app, "ws@example.com", pw).await;
    let mut c_ws = ready_socket(&app.url, &c).await;
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/auth/sessions/{b_session}"),
            Some(&c),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(closed_within_a_second(&mut b_ws).await, 4401);
    stays_open(&mut c_ws).await;

    // A password change ends the other sessions' sockets, not the changer's.
    let (d, _) = sign_in(&app, "ws@example.com", pw).await;
    let mut d_ws = ready_socket(&second_url, &d).await;
    let (status, body) = app
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&c),
            Some(&serde_json::json!({"password": pw, "new_password": "second passphrase here"})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(closed_within_a_second(&mut d_ws).await, 4401);
    stays_open(&mut c_ws).await;

    // A password reset ends every session, and so every socket.
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/password-reset",
            None,
            Some(&serde_json::json!({"email": "ws@example.com"})),
        )
        .await;
    assert_eq!(status, 202);
    let mails = app.smtp.wait_for(2, Duration::from_secs(20));
    let token = lectern_tests::token_from_link(&mails[1].parsed().text);
    let mut c2_ws = ready_socket(&second_url, &c).await;
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/auth/password-reset/confirm",
            None,
            Some(&serde_json::json!({"token": token, "password": "third passphrase here"})),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(closed_within_a_second(&mut c_ws).await, 4401);
    assert_eq!(closed_within_a_second(&mut c2_ws).await, 4401);

    // Deleting the account closes its sockets too.
    let (e, _) = sign_in(&app, "ws@example.com", "third passphrase here").await;
    let mut e_ws = ready_socket(&second_url, &e).await;
    let (status, _) = app
        .call(
            "DELETE",
            "/api/v1/me",
            Some(&e),
            Some(&serde_json::json!({"password": "third passphrase here"})),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(closed_within_a_second(&mut e_ws).await, 4401);
    drop(second);
}

//! CORS: browsers on the allowed origins (`CORS_ALLOWED_ORIGINS`) get grants from the API, its
//! HLS playlist routes included, and from the embedded S3 endpoint (presigned PUTs, parts,
//! GETs, with ETags readable). Any other origin gets no grant, and is still answered as usual:
//! CORS binds browsers, not other clients. A bucket Lectern creates gets the CORS rule.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use lectern_core::config::{AllowedOrigins, OriginPattern, Secret, StorageConfig};
use lectern_core::storage::Storage;
use lectern_tests::{S3_KEY, S3_SECRET, TestApp, fixtures};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

const ALLOWED: &str = "https://app.example.com";
const ALLOWED_DEV: &str = "http://localhost:5173";
const OTHER: &str = "https://evil.example.net";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The comma-separated values of a header, lowercased.
fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

async fn spawn() -> TestApp {
    let app = TestApp::spawn_with_env(&[(
        "CORS_ALLOWED_ORIGINS",
        &format!("{ALLOWED}, http://localhost:*"),
    )])
    .await;
    app.wait_until_ready().await;
    app
}

async fn request(
    app: &TestApp,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut req = app.http.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("request");
    let (status, headers) = (res.status(), res.headers().clone());
    (status, headers, res.text().await.expect("body"))
}

#[tokio::test]
async fn the_api_grants_allowed_origins_and_still_answers_the_others() {
    let app = spawn().await;
    let url = format!("{}/api/v1/courses", app.url);

    for origin in [ALLOWED, ALLOWED_DEV] {
        let (status, headers, _) = request(&app, Method::GET, &url, &[("Origin", origin)]).await;
        assert_eq!(status, 200);
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            Some(origin)
        );
        let exposed = list(&headers, "access-control-expose-headers");
        for name in [
            "location",
            "retry-after",
            "etag",
            "idempotent-replayed",
            "www-authenticate",
        ] {
            assert!(
                exposed.contains(&name.to_owned()),
                "{name} not in {exposed:?}"
            );
        }
        assert!(list(&headers, "vary").contains(&"origin".to_owned()));
        // Bearer tokens, not cookies: no credentials cross-origin.
        assert_eq!(header(&headers, "access-control-allow-credentials"), None);
    }

    // Another origin, or a look-alike of an allowed one: no grant, same answer.
    let (_, _, expected) = request(&app, Method::GET, &url, &[]).await;
    for origin in [
        OTHER,
        "https://app.example.com.evil.net",
        "http://app.example.com",
        "null",
    ] {
        let (status, headers, body) = request(&app, Method::GET, &url, &[("Origin", origin)]).await;
        assert_eq!(status, 200, "{origin}: {body}");
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            None,
            "{origin}"
        );
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&body).unwrap(),
            serde_json::from_str(&expected).unwrap(),
        );
        assert_eq!(a["items"], b["items"], "{origin}");
    }

    // Errors carry the grant too, so a page can read the 401 and its WWW-Authenticate.
    let me = format!("{}/api/v1/me", app.url);
    let (status, headers, body) = request(&app, Method::GET, &me, &[("Origin", ALLOWED)]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    assert!(body.contains("\"error\""), "{body}");
    let missing = format!("{}/api/v1/no-such-route", app.url);
    let (status, headers, _) = request(&app, Method::GET, &missing, &[("Origin", ALLOWED)]).await;
    assert_eq!(status, 404);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some(ALLOWED)
    );
}

#[tokio::test]
async fn preflights_grant_the_methods_and_headers_clients_send() {
    let app = spawn().await;
    let uploads = format!("{}/api/v1/media/uploads", app.url);
    let (status, headers, _) = request(
        &app,
        Method::OPTIONS,
        &uploads,
        &[
            ("Origin", ALLOWED),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type, idempotency-key",
            ),
        ],
    )
    .await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    let methods = list(&headers, "access-control-allow-methods");
    for m in ["get", "post", "put", "patch", "delete"] {
        assert!(methods.contains(&m.to_owned()), "{m} not in {methods:?}");
    }
    let allowed = list(&headers, "access-control-allow-headers");
    for h in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed.contains(&h.to_owned()), "{h} not in {allowed:?}");
    }
    assert_eq!(header(&headers, "access-control-max-age"), Some("3600"));
    assert_eq!(header(&headers, "access-control-allow-credentials"), None);

    // Another origin: no grant, and no error either (the browser stops on its own).
    let (status, headers, _) = request(
        &app,
        Method::OPTIONS,
        &uploads,
        &[
            ("Origin", OTHER),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    assert_eq!(header(&headers, "access-control-allow-methods"), None);

    // An allowed origin asking for a header the API does not take: refused, in the error model.
    let (status, headers, body) = request(
        &app,
        Method::OPTIONS,
        &uploads,
        &[
            ("Origin", ALLOWED),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "x-not-allowed"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"]["code"], "cors_preflight_refused", "{body}");
}

#[tokio::test]
async fn hls_playlists_are_readable_from_an_allowed_origin() {
    let app = spawn().await;
    let (token, instructor) = app.verified_instructor("hls-cors@example.com").await;
    let (_, videos) = fixtures::published_course_with_videos(
        &app.db.pool,
        instructor.parse().unwrap(),
        "Playlists",
        "0",
        1,
        4.0,
    )
    .await;
    let id = videos[0];
    app.services()
        .storage
        .put(
            &format!("media/{id}/v/master.m3u8"),
            b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=500000,RESOLUTION=320x180\n180p/index.m3u8\n"
                .to_vec()
                .into(),
            "application/vnd.apple.mpegurl",
        )
        .await
        .expect("put playlist");
    let (status, playback) = app
        .call(
            "GET",
            &format!("/api/v1/media/{id}/playback"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{playback}");
    let master = playback["hls_url"].as_str().expect("hls_url").to_owned();
    assert!(master.contains("/hls/master.m3u8?token="), "{master}");

    // hls.js sends no custom header, so no preflight: the GET itself must carry the grant.
    let (status, headers, body) = request(&app, Method::GET, &master, &[("Origin", ALLOWED)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    assert!(body.contains("180p/index.m3u8?token="), "{body}");
    // A player configured with custom headers preflights: granted as well.
    let (status, headers, _) = request(
        &app,
        Method::OPTIONS,
        &master,
        &[
            ("Origin", ALLOWED_DEV),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
    )
    .await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some(ALLOWED_DEV)
    );
    // Another origin: the playlist is still served (curl, a native player), without a grant.
    let (status, headers, _) = request(&app, Method::GET, &master, &[("Origin", OTHER)]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    // The storyboard route too (404 here: no storyboard), with the grant.
    let vtt = master.replace("/hls/master.m3u8", "/storyboard.vtt");
    let (status, headers, _) = request(&app, Method::GET, &vtt, &[("Origin", ALLOWED)]).await;
    assert_eq!(status, 404);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some(ALLOWED)
    );
}

/// An embedded S3 endpoint of the test's own, granting `origins`, and a client for it.
async fn local_s3(origins: &str) -> (Storage, StorageConfig, tokio::sync::oneshot::Sender<()>) {
    let dir = lectern_tests::scratch_dir("cors-s3");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let patterns = origins
        .split(',')
        .map(|o| o.trim().parse::<OriginPattern>().expect("origin"))
        .collect();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(lectern_core::storage::local::serve(
        listener,
        dir,
        S3_KEY.into(),
        S3_SECRET.into(),
        AllowedOrigins::new(patterns),
        async {
            let _ = stopped.await;
        },
    ));
    let config = StorageConfig {
        endpoint: Some(endpoint.parse().expect("url")),
        bucket: "cors-test".into(),
        region: "us-east-1".into(),
        access_key_id: S3_KEY.into(),
        secret_access_key: Secret::from(S3_SECRET),
        force_path_style: true,
        local: None,
    };
    let storage = Storage::new(&config);
    storage.ensure_bucket().await.expect("bucket");
    (storage, config, stop)
}

#[tokio::test]
async fn the_embedded_s3_endpoint_grants_presigned_puts_and_gets_to_allowed_origins_only() {
    let (storage, _config, _stop) = local_s3(&format!("{ALLOWED}, http://localhost:*")).await;
    let http = reqwest::Client::new();
    let ttl = Duration::from_secs(300);
    let body = b"hello from a browser".to_vec();
    let put = storage
        .presign_put("media/x/source", "video/mp4", body.len() as u64, ttl)
        .await
        .expect("presign");
    let send = |method: Method, url: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>| {
        let mut req = http.request(method, url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        async move {
            let res = req.send().await.expect("request");
            let (status, headers) = (res.status(), res.headers().clone());
            (status, headers, res.text().await.unwrap_or_default())
        }
    };

    // Preflight of the presigned PUT, with the header its signature binds.
    let preflight = [
        ("Access-Control-Request-Method", "PUT"),
        ("Access-Control-Request-Headers", "content-type"),
    ];
    for origin in [ALLOWED, ALLOWED_DEV] {
        let mut headers = vec![("Origin", origin)];
        headers.extend(preflight);
        let (status, h, _) = send(Method::OPTIONS, &put.url, &headers, None).await;
        assert!(status.is_success(), "{status}");
        assert_eq!(header(&h, "access-control-allow-origin"), Some(origin));
        assert!(list(&h, "access-control-allow-methods").contains(&"put".to_owned()));
        assert!(list(&h, "access-control-allow-headers").contains(&"content-type".to_owned()));
    }
    let mut headers = vec![("Origin", OTHER)];
    headers.extend(preflight);
    let (_, h, _) = send(Method::OPTIONS, &put.url, &headers, None).await;
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        None,
        "another origin"
    );
    for (method, requested) in [("DELETE", "content-type"), ("PUT", "x-not-allowed")] {
        let (_, h, _) = send(
            Method::OPTIONS,
            &put.url,
            &[
                ("Origin", ALLOWED),
                ("Access-Control-Request-Method", method),
                ("Access-Control-Request-Headers", requested),
            ],
            None,
        )
        .await;
        assert_eq!(
            header(&h, "access-control-allow-origin"),
            None,
            "{method} with {requested}"
        );
    }
    // x-amz-* headers (checksums, metadata) are allowed.
    let (_, h, _) = send(
        Method::OPTIONS,
        &put.url,
        &[
            ("Origin", ALLOWED),
            ("Access-Control-Request-Method", "PUT"),
            (
                "Access-Control-Request-Headers",
                "content-type,x-amz-checksum-crc32",
            ),
        ],
        None,
    )
    .await;
    assert_eq!(header(&h, "access-control-allow-origin"), Some(ALLOWED));

    // The PUT itself: granted, ETag exposed.
    let mut headers: Vec<(&str, &str)> = put
        .headers
        .iter()
        .filter(|(k, _)| k.as_str() != "content-length")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    headers.push(("Origin", ALLOWED));
    let (status, h, text) = send(Method::PUT, &put.url, &headers, Some(body.clone())).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(ALLOWED));
    assert!(list(&h, "access-control-expose-headers").contains(&"etag".to_owned()));
    assert!(header(&h, "etag").is_some());

    // A GET (segments, pictures): granted to allowed origins; others still get the bytes.
    let get = storage
        .presign_get("media/x/source", ttl)
        .await
        .expect("presign get");
    // A player asking for a byte range preflights its GET.
    for (origin, granted) in [(ALLOWED_DEV, true), (OTHER, false)] {
        let (status, h, _) = send(
            Method::OPTIONS,
            &get.url,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "range"),
            ],
            None,
        )
        .await;
        assert!(status.is_success(), "{status}");
        assert_eq!(
            header(&h, "access-control-allow-origin"),
            granted.then_some(origin),
            "{origin}"
        );
    }
    let (status, h, text) = send(Method::GET, &get.url, &[("Origin", ALLOWED_DEV)], None).await;
    assert_eq!(status, 200);
    assert_eq!(text.as_bytes(), body.as_slice());
    assert_eq!(header(&h, "access-control-allow-origin"), Some(ALLOWED_DEV));
    let (status, h, text) = send(Method::GET, &get.url, &[("Origin", OTHER)], None).await;
    assert_eq!(status, 200);
    assert_eq!(text.as_bytes(), body.as_slice());
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    // The signature still rules: a grant is no authorisation.
    let unsigned = get.url.split('?').next().unwrap().to_owned();
    let (status, h, _) = send(Method::GET, &unsigned, &[("Origin", ALLOWED)], None).await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(ALLOWED));

    // A multipart part: its ETag is readable, so a page can complete the upload.
    let upload_id = storage
        .create_multipart("media/y/source", "video/mp4")
        .await
        .expect("multipart");
    let part_body = vec![7u8; 1024];
    let part = storage
        .presign_upload_part("media/y/source", &upload_id, 1, part_body.len() as u64, ttl)
        .await
        .expect("presign part");
    let (status, h, _) = send(
        Method::OPTIONS,
        &part.url,
        &[
            ("Origin", ALLOWED),
            ("Access-Control-Request-Method", "PUT"),
        ],
        None,
    )
    .await;
    assert!(status.is_success());
    assert_eq!(header(&h, "access-control-allow-origin"), Some(ALLOWED));
    let (status, h, text) = send(
        Method::PUT,
        &part.url,
        &[("Origin", ALLOWED)],
        Some(part_body),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(ALLOWED));
    assert!(list(&h, "access-control-expose-headers").contains(&"etag".to_owned()));
    let etag = header(&h, "etag").expect("etag").to_owned();
    storage
        .complete_multipart("media/y/source", &upload_id, &[(1, etag)])
        .await
        .expect("the ETag a browser reads completes the upload");
}

#[tokio::test]
async fn a_bucket_lectern_creates_gets_the_cors_rule_and_an_existing_one_keeps_its_own() {
    let (_storage, mut config, _stop) = local_s3(ALLOWED).await;
    let origins = AllowedOrigins::new(vec![
        ALLOWED.parse().unwrap(),
        "http://localhost:*".parse().unwrap(),
    ]);

    config.bucket = "created-by-lectern".into();
    let created = Storage::new(&config).with_cors(&origins);
    created.ensure_bucket().await.expect("bucket");
    let rules = created.cors_rules().await.expect("rules");
    assert_eq!(rules.len(), 1, "{rules:?}");
    let (allowed, methods) = &rules[0];
    assert_eq!(
        allowed,
        &vec![ALLOWED.to_owned(), "http://localhost:*".to_owned()]
    );
    for m in ["GET", "HEAD", "PUT"] {
        assert!(methods.contains(&m.to_owned()), "{methods:?}");
    }

    // A bucket that exists already is the operator's: its rules are left alone.
    config.bucket = "made-by-the-operator".into();
    Storage::new(&config).ensure_bucket().await.expect("bucket");
    let existing = Storage::new(&config).with_cors(&origins);
    existing.ensure_bucket().await.expect("bucket");
    assert!(existing.cors_rules().await.expect("rules").is_empty());
}

#[tokio::test]
async fn the_api_sets_the_rule_on_the_bucket_it_creates() {
    let app = spawn().await;
    let storage = app.services().storage;
    // The API sets the rule right after creating the bucket, in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let origins = loop {
        let rules = storage.cors_rules().await.expect("rules");
        let origins: Vec<String> = rules.iter().flat_map(|(o, _)| o.clone()).collect();
        if !origins.is_empty() || std::time::Instant::now() > deadline {
            break origins;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        origins,
        vec![ALLOWED.to_owned(), "http://localhost:*".to_owned()]
    );
}

//! The storefront for visitors and the student's certificates, end to end: course images a plain
//! client loads without a login, free previews played anonymously down to a segment, the
//! instructor's public profile, and certificates found through enrollments, progress and
//! `/me/certificates`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use lectern_tests::TestApp;
use lectern_tests::fixtures::{mint_users, published_course_with_videos};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const JOB_WAIT: Duration = Duration::from_secs(180);

/// A short test pattern video with a tone, H.264 + AAC in MP4.
fn make_video(dir: &Path, name: &str, secs: u32) -> Vec<u8> {
    let path = dir.join(name);
    let size = format!("testsrc2=size=320x180:rate=25:duration={secs}");
    let tone = format!("sine=frequency=440:duration={secs}");
    let p = path.to_string_lossy().into_owned();
    lectern_tests::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &size,
        "-f",
        "lavfi",
        "-i",
        &tone,
        "-c:a",
        "aac",
        "-shortest",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        &p,
    ]);
    std::fs::read(&path).unwrap()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    }))
    .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
    .unwrap();
    out
}

/// Uploads an image through `POST /media` and waits for its thumbnails; returns its id.
async fn upload_image(app: &TestApp, token: &str) -> String {
    let form = reqwest::multipart::Form::new().text("title", "Cover").part(
        "file",
        reqwest::multipart::Part::bytes(png(900, 600))
            .file_name("cover.png")
            .mime_str("image/png")
            .unwrap(),
    );
    let res = app
        .http
        .post(format!("{}/api/v1/media", app.url))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let done: Value = res.json().await.unwrap();
    app.wait_for_job(done["job"]["id"].as_str().unwrap(), "succeeded", JOB_WAIT)
        .await;
    done["media"]["id"].as_str().unwrap().to_owned()
}

/// Uploads a video into a section through a presigned PUT and waits for its HLS ladder.
async fn upload_video(app: &TestApp, token: &str, bytes: Vec<u8>, section: &str) -> String {
    let (status, started) = app
        .call(
            "POST",
            "/api/v1/media/uploads",
            Some(token),
            Some(&json!({
                "file_name": "lesson.mp4", "file_size": bytes.len(), "mime_type": "video/mp4",
                "section_id": section, "title": "Tying a bowline"
            })),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    let request = &started["upload"]["request"];
    let mut put = app.http.put(request["url"].as_str().unwrap()).body(bytes);
    for (k, v) in request["headers"].as_object().unwrap() {
        if !k.eq_ignore_ascii_case("content-length") {
            put = put.header(k, v.as_str().unwrap());
        }
    }
    assert!(put.send().await.unwrap().status().is_success());
    let id = started["media"]["id"].as_str().unwrap().to_owned();
    let (status, done) = app
        .call(
            "POST",
            &format!("/api/v1/media/uploads/{id}/complete"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 202, "{done}");
    app.wait_for_job(done["job"]["id"].as_str().unwrap(), "succeeded", JOB_WAIT)
        .await;
    id
}

/// A ready video row as the pipeline leaves it (no stored files: for answers that never reach
/// storage).
async fn add_ready_video(
    pool: &PgPool,
    owner: &str,
    course: &str,
    section: Option<&str>,
) -> String {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO media (id, owner_id, course_id, section_id, kind, state, title, duration_secs)
         VALUES ($1, $2::uuid, $3::uuid, $4::uuid, 'video', 'ready', 'Knots, part 2', 60)",
    )
    .bind(id)
    .bind(owner)
    .bind(course)
    .bind(section)
    .execute(pool)
    .await
    .unwrap();
    id.to_string()
}

async fn set_preview(app: &TestApp, token: Option<&str>, media: &str, on: bool) -> (u16, Value) {
    app.call(
        "PATCH",
        &format!("/api/v1/media/{media}"),
        token,
        Some(&json!({ "is_preview": on })),
    )
    .await
}

async fn is_preview(pool: &PgPool, media: &str) -> bool {
    sqlx::query_scalar("SELECT is_preview FROM media WHERE id = $1::uuid")
        .bind(media)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A client that does not follow redirects, like a check of the 302 itself.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Loads an image URL the way a plain `<img>` does (no Authorization, redirects followed);
/// returns the decoded size and the content type.
async fn load_img(app: &TestApp, url: &str) -> ((u32, u32), String) {
    let res = app.http.get(url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200, "{url}");
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = res.bytes().await.unwrap();
    let img = image::load_from_memory(&bytes).expect("an image");
    ((img.width(), img.height()), content_type)
}

#[tokio::test]
async fn a_visitor_sees_the_thumbnail_and_plays_a_free_preview_down_to_a_segment() {
    let app = TestApp::spawn().await;
    app.wait_until_ready().await;
    let pool = &app.db.pool;
    let (teacher, teacher_id) = app.verified_instructor("teacher@example.com").await;
    let (rival, _) = app.verified_instructor("rival@example.com").await;
    let student = app.register("student@example.com", "student").await;
    let student = student["access_token"].as_str().unwrap().to_owned();
    let dir = lectern_tests::scratch_dir("storefront");

    let (status, course) = app
        .call(
            "POST",
            "/api/v1/courses",
            Some(&teacher),
            Some(
                &json!({"title": "Knots at Sea", "short_description": "Every knot a sailor needs"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{course}");
    let course_id = course["id"].as_str().unwrap().to_owned();
    let section = course["sections"][0]["id"].as_str().unwrap().to_owned();
    let image = upload_image(&app, &teacher).await;
    let (status, body) = app
        .call(
            "PATCH",
            &format!("/api/v1/courses/{course_id}"),
            Some(&teacher),
            Some(&json!({ "thumbnail_media_id": image })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let video = upload_video(&app, &teacher, make_video(&dir, "lesson.mp4", 3), &section).await;
    let other = add_ready_video(pool, &teacher_id, &course_id, Some(&section)).await;
    let loose = add_ready_video(pool, &teacher_id, &course_id, None).await;

    // Only the course's instructor marks a preview; everyone else is told nothing exists.
    let (status, media) = set_preview(&app, Some(&teacher), &video, true).await;
    assert_eq!(status, 200, "{media}");
    assert_eq!(media["is_preview"], true);
    assert_eq!(media["id"], video.as_str());
    for (who, token) in [("rival instructor", &rival), ("student", &student)] {
        let (status, body) = set_preview(&app, Some(token), &video, false).await;
        assert_eq!(status, 404, "{who}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
        let (status, _) = set_preview(&app, Some(token), &other, true).await;
        assert_eq!(status, 404, "{who}");
    }
    assert!(is_preview(pool, &video).await, "nothing changed");
    assert!(!is_preview(pool, &other).await, "nothing changed");
    assert_eq!(set_preview(&app, None, &video, false).await.0, 401);
    // Only a video in a section can be a preview.
    for media in [&image, &loose] {
        let (status, body) = set_preview(&app, Some(&teacher), media, true).await;
        assert_eq!(status, 422, "{body}");
        assert!(body["error"]["fields"]["is_preview"].is_array(), "{body}");
        assert!(!is_preview(pool, media).await);
    }
    let (status, body) = app
        .call(
            "PATCH",
            &format!("/api/v1/media/{video}"),
            Some(&teacher),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(is_preview(pool, &video).await);
    assert_eq!(
        set_preview(&app, Some(&teacher), &Uuid::now_v7().to_string(), true)
            .await
            .0,
        404
    );

    // A draft course: its preview and its thumbnail are nobody's business but its instructor's.
    assert_eq!(
        app.get(&format!("/api/v1/media/{video}/preview")).await.0,
        404
    );
    let thumb = format!("{}/api/v1/courses/{course_id}/thumbnail", app.url);
    let res = no_redirects().get(&thumb).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let res = no_redirects()
        .get(&thumb)
        .bearer_auth(&teacher)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 302);
    assert_eq!(res.headers()["cache-control"], "private, no-store");
    let res = no_redirects()
        .get(&thumb)
        .bearer_auth(&rival)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);

    // Published (the publishing rules are the courses tests' business).
    sqlx::query(
        "UPDATE courses SET status = 'published', published_at = now() WHERE id = $1::uuid",
    )
    .bind(&course_id)
    .execute(pool)
    .await
    .unwrap();

    // The visitor searches: the card carries a thumbnail URL a plain <img> loads.
    let (status, found) = app.get("/api/v1/courses?q=knots").await;
    assert_eq!(status, 200, "{found}");
    let card = &found["items"][0];
    assert_eq!(card["id"], course_id.as_str(), "{found}");
    let thumbnail_url = card["thumbnail_url"]
        .as_str()
        .expect("thumbnail_url")
        .to_owned();
    assert!(thumbnail_url.starts_with(&app.url), "{thumbnail_url}");
    let (again_status, again) = app.get("/api/v1/courses?q=knots").await;
    assert_eq!(again_status, 200);
    assert_eq!(
        again["items"][0]["thumbnail_url"], card["thumbnail_url"],
        "a stable URL: search answers stay cacheable"
    );
    let res = no_redirects().get(&thumbnail_url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 302);
    let cache = res.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(cache.starts_with("public, max-age="), "{cache}");
    assert!(
        res.headers()["location"]
            .to_str()
            .unwrap()
            .contains("X-Amz-Signature=")
    );
    let ((w, h), content_type) = load_img(&app, &thumbnail_url).await;
    assert_eq!((w, h), (300, 200));
    assert!(content_type.starts_with("image/"), "{content_type}");
    let res = app
        .http
        .get(format!("{thumbnail_url}&format=webp"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let webp = res.bytes().await.unwrap();
    assert_eq!(&webp[8..12], b"WEBP");
    let res = no_redirects()
        .get(format!("{thumb}?variant=poster"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);

    // The course page: the larger picture, and which lessons are free previews.
    let (status, page) = app.get(&format!("/api/v1/courses/{course_id}")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["thumbnail_url"], card["thumbnail_url"]);
    let ((w, h), _) = load_img(&app, page["preview_image_url"].as_str().unwrap()).await;
    assert_eq!((w, h), (900, 600));
    let items = page["sections"][0]["media"].as_array().unwrap();
    let flag = |id: &str| {
        items
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["is_preview"].clone())
    };
    assert_eq!(flag(&video), Some(json!(true)), "{page}");
    assert_eq!(flag(&other), Some(json!(false)), "{page}");

    // The visitor plays the preview through signed URLs alone, down to a segment.
    let (status, play) = app.get(&format!("/api/v1/media/{video}/preview")).await;
    assert_eq!(status, 200, "{play}");
    assert!(play["expires_at"].is_string());
    let master_url = play["hls_url"].as_str().unwrap();
    let res = app.http.get(master_url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let master = res.text().await.unwrap();
    assert!(master.starts_with("#EXTM3U"), "{master}");
    let variant = master
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap();
    let base = master_url.split("master.m3u8").next().unwrap();
    let res = app
        .http
        .get(format!("{base}{variant}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let playlist = res.text().await.unwrap();
    let segment = playlist
        .lines()
        .find(|l| l.starts_with("http"))
        .expect("a segment");
    let res = app.http.get(segment).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let bytes = res.bytes().await.unwrap();
    assert!(bytes.len() > 188 && bytes[0] == 0x47, "an MPEG-TS segment");

    // Not a preview, unknown, or no longer one: 404 for the visitor.
    assert_eq!(
        app.get(&format!("/api/v1/media/{other}/preview")).await.0,
        404
    );
    assert_eq!(
        app.get(&format!("/api/v1/media/{image}/preview")).await.0,
        404
    );
    let (status, body) = app
        .get(&format!("/api/v1/media/{}/preview", Uuid::now_v7()))
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    // The ordinary playback route still wants a login and an enrollment.
    assert_eq!(
        app.get(&format!("/api/v1/media/{video}/playback")).await.0,
        401
    );
    let (status, _) = app
        .call(
            "GET",
            &format!("/api/v1/media/{video}/playback"),
            Some(&student),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Unpublished: the preview and the public thumbnail are gone.
    let (status, _) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{course_id}/unpublish"),
            Some(&teacher),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.get(&format!("/api/v1/media/{video}/preview")).await.0,
        404
    );
    let res = no_redirects().get(&thumbnail_url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);

    // Published again but unmarked: no preview.
    sqlx::query("UPDATE courses SET status = 'published' WHERE id = $1::uuid")
        .bind(&course_id)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(
        app.get(&format!("/api/v1/media/{video}/preview")).await.0,
        200
    );
    let (status, media) = set_preview(&app, Some(&teacher), &video, false).await;
    assert_eq!(status, 200, "{media}");
    assert_eq!(media["is_preview"], false);
    assert_eq!(
        app.get(&format!("/api/v1/media/{video}/preview")).await.0,
        404
    );

    // Marked again: a deleted course, then a deleted section, end the preview.
    assert_eq!(set_preview(&app, Some(&teacher), &video, true).await.0, 200);
    assert_eq!(
        app.get(&format!("/api/v1/media/{video}/preview")).await.0,
        200
    );
    let deleted = |on: bool| {
        sqlx::query(
            "UPDATE courses SET deleted_at = CASE WHEN $2 THEN now() END WHERE id = $1::uuid",
        )
        .bind(course_id.clone())
        .bind(on)
        .execute(pool)
    };
    deleted(true).await.unwrap();
    assert_eq!(
        app.get(&format!("/api/v1/media/{video}/preview")).await.0,
        404
    );
    deleted(false).await.unwrap();
    assert_eq!(
        app.get(&format!("/api/v1/media/{video}/preview")).await.0,
        200
    );
    let (status, body) = app
        .call(
            "DELETE",
            &format!("/api/v1/sections/{section}"),
            Some(&teacher),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        app.get(&format!("/api/v1/media/{video}/preview")).await.0,
        404
    );
    let (status, body) = set_preview(&app, Some(&teacher), &video, true).await;
    assert_eq!(status, 422, "no longer in a section: {body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_instructors_public_profile_shows_published_courses_only() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let teacher = app.register("ada@example.com", "instructor").await;
    let teacher_token = teacher["access_token"].as_str().unwrap().to_owned();
    let teacher_id: Uuid = teacher["user"]["id"].as_str().unwrap().parse().unwrap();
    let (status, _) = app
        .call(
            "PATCH",
            "/api/v1/me",
            Some(&teacher_token),
            Some(&json!({"full_name": "Ada Lovelace", "bio": "Engines and notes."})),
        )
        .await;
    assert_eq!(status, 200);
    let (published, _) =
        published_course_with_videos(pool, teacher_id, "Analytical Engines", "0", 1, 30.0).await;
    let (status, draft) = app
        .call(
            "POST",
            "/api/v1/courses",
            Some(&teacher_token),
            Some(&json!({"title": "Unfinished Notes"})),
        )
        .await;
    assert_eq!(status, 201, "{draft}");
    let students = mint_users(pool, 2, "student").await;
    for (_, token) in &students {
        let (status, _) = app
            .call(
                "POST",
                &format!("/api/v1/users/{teacher_id}/follow"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, 204);
    }

    let (status, profile) = app.get(&format!("/api/v1/users/{teacher_id}")).await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["id"], teacher_id.to_string());
    assert_eq!(profile["name"], "Ada Lovelace");
    assert_eq!(profile["bio"], "Engines and notes.");
    assert_eq!(profile["follower_count"], 2);
    let courses = profile["courses"].as_array().unwrap();
    assert_eq!(courses.len(), 1, "{profile}");
    assert_eq!(courses[0]["id"], published.to_string());
    assert!(courses[0]["thumbnail_url"].is_null(), "no thumbnail here");
    assert!(
        profile.get("email").is_none(),
        "nothing private on a public profile: {profile}"
    );

    // A student, an unknown id, a suspended instructor: 404.
    let (status, body) = app.get(&format!("/api/v1/users/{}", students[0].0)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(
        app.get(&format!("/api/v1/users/{}", Uuid::now_v7()))
            .await
            .0,
        404
    );
    assert_eq!(app.get("/api/v1/users/not-a-uuid").await.0, 400);
    sqlx::query("UPDATE users SET status = 'suspended' WHERE id = $1")
        .bind(teacher_id)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(app.get(&format!("/api/v1/users/{teacher_id}")).await.0, 404);
}

async fn beat(app: &TestApp, token: &str, video: Uuid, position: f64, watched: f64) -> u16 {
    app.call(
        "PUT",
        &format!("/api/v1/progress/videos/{video}"),
        Some(token),
        Some(&json!({"last_position": position, "watch_time": watched})),
    )
    .await
    .0
}

/// Enrolls and watches the course's one 20-second video to the end (with the wall time the
/// server wants to have passed between heartbeats).
async fn complete_course(app: &TestApp, user: Uuid, token: &str, course: Uuid, video: Uuid) {
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/courses/{course}/enroll"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["enrollment"]["certificate"].is_null(), "{body}");
    assert_eq!(beat(app, token, video, 10.0, 10.0).await, 200);
    sqlx::query(
        "UPDATE video_progress SET first_watched_at = first_watched_at - interval '10 seconds',
                                   last_heartbeat_at = last_heartbeat_at - interval '10 seconds'
          WHERE user_id = $1",
    )
    .bind(user)
    .execute(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(beat(app, token, video, 20.0, 10.0).await, 200);
}

/// The caller's enrollment in `course` once its certificate is there.
async fn certified_enrollment(app: &TestApp, token: &str, course: Uuid) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, list) = app
            .call("GET", "/api/v1/me/enrollments", Some(token), None)
            .await;
        assert_eq!(status, 200, "{list}");
        let enrollment = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["course_id"] == course.to_string())
            .cloned()
            .expect("the enrollment");
        if !enrollment["certificate"].is_null() {
            return enrollment;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate: {enrollment}\n{}",
            app.worker_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn students_find_their_own_certificates_and_nobody_elses() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let (teacher, _) = mint_users(pool, 1, "instructor").await.remove(0);
    let (rope, rope_videos) =
        published_course_with_videos(pool, teacher, "Rope Work", "0", 1, 20.0).await;
    let (sails, sail_videos) =
        published_course_with_videos(pool, teacher, "Sail Trim", "0", 1, 20.0).await;
    let students = mint_users(pool, 2, "student").await;
    let (a_id, a) = (students[0].0, students[0].1.clone());
    let (b_id, b) = (students[1].0, students[1].1.clone());

    // Before completion: no certificate anywhere.
    let (status, empty) = app
        .call("GET", "/api/v1/me/certificates", Some(&a), None)
        .await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty, json!({"items": [], "next_cursor": null}));
    complete_course(&app, a_id, &a, rope, rope_videos[0]).await;
    complete_course(&app, b_id, &b, sails, sail_videos[0]).await;

    // The enrollment carries the certificate once issued; its links resolve.
    let enrollment = certified_enrollment(&app, &a, rope).await;
    assert_eq!(enrollment["status"], "completed");
    let cert = &enrollment["certificate"];
    let id = cert["id"].as_str().unwrap().to_owned();
    let code = cert["code"].as_str().unwrap().to_owned();
    let (status, verified) = app.get(&format!("/api/v1/certificates/{id}")).await;
    assert_eq!(status, 200, "public verification: {verified}");
    assert_eq!(verified["verification_code"], code.as_str());
    assert_eq!(verified["course_title"], "Rope Work");
    let verify_url = cert["verify_url"].as_str().unwrap();
    assert!(verify_url.contains(&id), "{verify_url}");
    if verify_url.starts_with(&format!("{}/api/", app.url)) {
        let res = app.http.get(verify_url).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{verify_url}");
    }
    let pdf = app
        .http
        .get(cert["pdf_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(pdf.status().as_u16(), 200);
    assert!(pdf.bytes().await.unwrap().starts_with(b"%PDF-"));

    // The progress view says the same.
    let (status, progress) = app
        .call(
            "GET",
            &format!("/api/v1/courses/{rope}/progress"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(status, 200, "{progress}");
    assert_eq!(progress["certificate"]["id"], id.as_str());
    assert_eq!(progress["certificate"]["code"], code.as_str());
    assert_eq!(progress["enrollment"]["certificate"]["id"], id.as_str());

    // Each student lists their own certificate, and only theirs.
    let b_enrollment = certified_enrollment(&app, &b, sails).await;
    let b_cert = b_enrollment["certificate"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(b_cert, id);
    for (token, mine, course, title) in [
        (&a, &id, rope, "Rope Work"),
        (&b, &b_cert, sails, "Sail Trim"),
    ] {
        let (status, list) = app
            .call("GET", "/api/v1/me/certificates", Some(token), None)
            .await;
        assert_eq!(status, 200, "{list}");
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{list}");
        assert_eq!(items[0]["id"], mine.as_str());
        assert_eq!(items[0]["course_id"], course.to_string());
        assert_eq!(items[0]["course_title"], title);
        assert!(items[0]["course_slug"].is_string());
        assert!(items[0]["issued_at"].is_string());
        assert!(items[0]["code"].is_string());
        assert!(items[0]["verify_url"].is_string());
        assert!(items[0]["pdf_url"].is_string());
        assert!(list["next_cursor"].is_null());
    }
    // Paging: a full page has a cursor, the next page is empty; a forged cursor is a 422.
    let (_, first) = app
        .call("GET", "/api/v1/me/certificates?limit=1", Some(&a), None)
        .await;
    let cursor = first["next_cursor"].as_str().expect("a cursor").to_owned();
    let (status, next) = app
        .call(
            "GET",
            &format!("/api/v1/me/certificates?limit=1&cursor={cursor}"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["items"], json!([]));
    let (status, body) = app
        .call(
            "GET",
            "/api/v1/me/certificates?cursor=00.00",
            Some(&a),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(app.get("/api/v1/me/certificates").await.0, 401);
}

#[tokio::test]
async fn the_openapi_document_describes_the_storefront_routes() {
    let app = TestApp::spawn_with(lectern_tests::Options {
        no_worker: true,
        ..Default::default()
    })
    .await;
    let (status, doc) = app.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let statuses = |op: &Value| {
        let mut s: Vec<String> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        s.sort();
        s
    };
    for (path, method, want) in [
        (
            "/api/v1/media/{id}",
            "patch",
            &["200", "400", "401", "404", "413", "415", "422", "503"][..],
        ),
        (
            "/api/v1/media/{id}/preview",
            "get",
            &["200", "400", "404", "422", "503"][..],
        ),
        (
            "/api/v1/courses/{id}/thumbnail",
            "get",
            &["302", "400", "401", "404", "422", "503"][..],
        ),
        (
            "/api/v1/users/{id}",
            "get",
            &["200", "400", "404", "422", "503"][..],
        ),
        (
            "/api/v1/me/certificates",
            "get",
            &["200", "400", "401", "422", "503"][..],
        ),
    ] {
        let operation = op(path, method);
        assert!(operation.is_object(), "{method} {path} missing");
        let listed = statuses(&operation);
        for status in want {
            assert!(
                listed.iter().any(|s| s == status),
                "{method} {path} does not list {status}: {listed:?}"
            );
        }

        for (status, response) in operation["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
    assert!(
        op("/api/v1/courses/{id}/thumbnail", "get")["responses"]["200"].is_null(),
        "the thumbnail route only redirects"
    );
    for (path, method, schema) in [
        ("/api/v1/media/{id}", "patch", "MediaView"),
        ("/api/v1/media/{id}/preview", "get", "Playback"),
        ("/api/v1/users/{id}", "get", "PublicProfile"),
    ] {
        assert_eq!(
            op(path, method)["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{schema}"),
            "{method} {path}"
        );
    }
    // Visitors need no token; the thumbnail takes one optionally (a draft's instructor).
    assert!(op("/api/v1/media/{id}/preview", "get")["security"].is_null());
    assert!(op("/api/v1/users/{id}", "get")["security"].is_null());
    let thumbnail_security = op("/api/v1/courses/{id}/thumbnail", "get")["security"].clone();
    assert!(
        thumbnail_security
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_object().is_some_and(serde_json::Map::is_empty)),
        "{thumbnail_security}"
    );
    let schemas = &doc["components"]["schemas"];
    for (schema, field) in [
        ("CourseCard", "thumbnail_url"),
        ("CourseDetail", "preview_image_url"),
        ("MediaItem", "is_preview"),
        ("MediaView", "is_preview"),
        ("EnrollmentView", "certificate"),
        ("CourseProgress", "certificate"),
        ("PublicProfile", "follower_count"),
        ("CertificateRef", "pdf_url"),
    ] {
        let text = schemas[schema].to_string();
        assert!(text.contains(&format!("\"{field}\"")), "{schema}: {text}");
    }
}

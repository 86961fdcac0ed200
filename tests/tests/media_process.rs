//! Media jobs run in a `lectern-media` child process: the worker (and the API) never load
//! FFmpeg, and a child killed mid-transcode costs one attempt, recorded with its signal, after
//! which the next attempt delivers a complete video.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lectern_tests::{JWT_SECRET, TestApp, bin, run_to_end};
use serde_json::json;

const JOB_WAIT: Duration = Duration::from_secs(300);

/// The shared libraries a program loads (`ldd`: its own and theirs, transitively).
fn shared_libraries(program: &Path) -> Vec<String> {
    let out = Command::new("ldd").arg(program).output().expect("ldd");
    assert!(
        out.status.success(),
        "ldd {}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn links_ffmpeg(libraries: &[String]) -> bool {
    libraries
        .iter()
        .any(|l| l.starts_with("libavcodec") || l.starts_with("libavformat"))
}

#[test]
fn only_the_media_program_loads_ffmpeg() {
    let worker = shared_libraries(&bin("lectern-worker"));
    assert!(
        !links_ffmpeg(&worker),
        "lectern-worker loads FFmpeg: {worker:?}"
    );
    let api = shared_libraries(&bin("lectern-api"));
    assert!(!links_ffmpeg(&api), "lectern-api loads FFmpeg: {api:?}");
    // The check itself sees FFmpeg where it is.
    let media = shared_libraries(&bin("lectern-media"));
    assert!(links_ffmpeg(&media), "lectern-media: {media:?}");
}

#[test]
fn a_worker_without_its_media_program_refuses_to_start() {
    let env: HashMap<String, String> = [
        ("JWT_SECRET", JWT_SECRET),
        ("LECTERN_MEDIA_BIN", "/nonexistent/lectern-media"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let (status, output) = run_to_end("lectern-worker", &[], &env);
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("LECTERN_MEDIA_BIN"), "{output}");
}

/// The pids of `lectern-media` processes whose parent is `parent`, from `/proc`.
fn media_children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so split after its last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm == "lectern-media" && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

fn make_video(dir: &Path, secs: u32) -> Vec<u8> {
    let path = dir.join("lecture.mp4");
    let src = format!("testsrc2=size=1280x720:rate=30:duration={secs}");
    let tone = format!("sine=frequency=440:duration={secs}");
    lectern_tests::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &src,
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
        path.to_str().unwrap(),
    ]);
    std::fs::read(&path).unwrap()
}

/// Uploads a video through a presigned PUT and completes it; returns (media id, job id).
async fn upload(app: &TestApp, token: &str, bytes: Vec<u8>) -> (String, String) {
    let body =
        json!({"file_name": "lecture.mp4", "file_size": bytes.len(), "mime_type": "video/mp4"});
    let (status, started) = app
        .call("POST", "/api/v1/media/uploads", Some(token), Some(&body))
        .await;
    assert_eq!(status, 201, "{started}");
    let request = &started["upload"]["request"];
    let mut req = app.http.put(request["url"].as_str().unwrap()).body(bytes);
    for (k, v) in request["headers"].as_object().unwrap() {
        if !k.eq_ignore_ascii_case("content-length") {
            req = req.header(k, v.as_str().unwrap());
        }
    }
    assert_eq!(req.send().await.unwrap().status().as_u16(), 200);
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
    (id, done["job"]["id"].as_str().unwrap().to_owned())
}

async fn text(app: &TestApp, url: &str) -> (u16, String) {
    let res = app.http.get(url).send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// The container duration ffprobe reads from a URL (off the runtime thread that serves it).
async fn probed_duration(url: &str) -> f64 {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "csv=p=0",
            ])
            .arg(&url)
            .output()
            .expect("ffprobe");
        assert!(
            out.status.success(),
            "ffprobe {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_media_process_killed_mid_transcode_costs_one_attempt_and_the_next_delivers_the_video() {
    let mut app = TestApp::spawn_with_env(&[("JOB_RETRY_BASE_MS", "100")]).await;
    app.wait_until_ready().await;
    let dir = lectern_tests::scratch_dir("media-process");
    let token = app.verified_instructor("killed@example.com").await.0;
    let secs = 20;
    let (media_id, job_id) = upload(&app, &token, make_video(&dir, secs)).await;

    // The worker runs the transcode in a child of its own; kill it once it has made progress.
    let worker_pid = app.worker.as_ref().unwrap().pid();
    let deadline = Instant::now() + Duration::from_secs(120);
    let child = loop {
        let (_, job) = app.get_as_admin(&format!("/api/v1/jobs/{job_id}")).await;
        let children = media_children(worker_pid);
        if job["progress"].as_i64().unwrap_or(0) > 0 && !children.is_empty() {
            assert_eq!(children.len(), 1, "{children:?}");
            break children[0];
        }
        assert!(
            Instant::now() < deadline,
            "no transcode in progress: {job}\n{}",
            app.worker_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = Command::new("kill")
        .args(["-KILL", &child.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // The attempt is recorded with the signal; the next attempt completes the video.
    let job = app.wait_for_job(&job_id, "succeeded", JOB_WAIT).await;
    assert_eq!(job["attempts"], 2, "{job}");
    let (status, detail) = app
        .get_as_admin(&format!("/api/v1/admin/jobs/{job_id}"))
        .await;
    assert_eq!(status, 200);
    let errors = detail["errors"].as_array().expect("errors").clone();
    assert_eq!(errors.len(), 1, "{detail}");
    assert_eq!(errors[0]["attempt"], 1, "{detail}");
    assert_eq!(
        errors[0]["error"], "the media process was killed by signal 9 (SIGKILL)",
        "{detail}"
    );
    // The worker itself lived through it.
    assert!(
        app.worker
            .as_mut()
            .unwrap()
            .child
            .try_wait()
            .unwrap()
            .is_none(),
        "the worker exited:\n{}",
        app.worker_log()
    );
    assert!(media_children(worker_pid).is_empty(), "the child is gone");

    // The media is ready, and every rendition is whole: a finished playlist whose segments all
    // exist and add up to the source.
    let (status, media) = app
        .call(
            "GET",
            &format!("/api/v1/media/{media_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{media}");
    assert_eq!(media["state"], "ready", "{media}");
    let (status, play) = app
        .call(
            "GET",
            &format!("/api/v1/media/{media_id}/playback"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{play}");
    let master_url = play["hls_url"].as_str().unwrap();
    let (status, master) = text(&app, master_url).await;
    assert_eq!(status, 200, "{master}");
    let base = master_url.split("master.m3u8").next().unwrap();
    let variants: Vec<&str> = master
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert_eq!(variants.len(), 3, "720p, 480p, 360p: {master}");
    for uri in variants {
        let variant_url = format!("{base}{uri}");
        let (status, variant) = text(&app, &variant_url).await;
        assert_eq!(status, 200, "{variant}");
        assert!(variant.contains("#EXT-X-ENDLIST"), "{variant}");
        let segments: Vec<&str> = variant.lines().filter(|l| l.starts_with("http")).collect();
        assert!(segments.len() >= 3, "{variant}");
        for segment in segments {
            let res = app.http.get(segment).send().await.unwrap();
            assert_eq!(res.status().as_u16(), 200, "{segment}");
            assert!(!res.bytes().await.unwrap().is_empty(), "{segment}");
        }
        let d = probed_duration(&variant_url).await;
        assert!(
            (d - f64::from(secs)).abs() < 0.5,
            "{uri} lasts {d} s, the source {secs} s"
        );
    }

    // Nothing of the killed attempt is left in the scratch folder.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.scratch_left().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.scratch_left().is_empty(), "{:?}", app.scratch_left());
    let _ = std::fs::remove_dir_all(&dir);
}

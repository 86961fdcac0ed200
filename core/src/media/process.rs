//! The processing jobs: a video's HLS ladder, poster and storyboard, an image's thumbnails.

use super::*;

/// Sets a flag when dropped, so blocking work stops when its job is abandoned (watchdog, shutdown).
pub(super) struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Publishes an event for a user to their open WebSockets (through `crate::events`).
/// Best effort: a lost event is only a missed progress update.
pub(super) async fn publish_event(services: &Services, user: Uuid, event: serde_json::Value) {
    crate::events::publish(
        services,
        &[crate::events::Envelope {
            user_id: user,
            event,
        }],
    )
    .await;
}

pub(super) async fn mark_failed(services: &Services, id: Uuid, reason: &str) {
    let result = sqlx::query(
        "UPDATE media SET state = 'failed', error = $2, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(&services.db)
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not record the media's failure");
    }
}

/// Records the outcome of a failed attempt on the media: failed with the reason when no attempt
/// is left (or retrying cannot help), still processing otherwise.
pub(super) async fn fail_job(services: &Services, row: &MediaRow, error: JobError) -> JobError {
    let last_attempt = jobs::current_job().is_none_or(|j| j.attempt >= j.max_attempts);
    match &error {
        JobError::Permanent(reason) => mark_failed(services, row.id, reason).await,
        JobError::Retryable(reason) if last_attempt => {
            mark_failed(services, row.id, &format!("processing failed: {reason}")).await;
        }
        JobError::Retryable(_) => {}
    }
    publish_event(
        services,
        row.owner_id,
        serde_json::json!({"type": "media.failed", "media_id": row.id, "error": error.to_string()}),
    )
    .await;
    error
}

pub(super) async fn load_for_job(
    services: &Services,
    id: Uuid,
) -> std::result::Result<Option<MediaRow>, JobError> {
    let mut conn = services
        .db
        .acquire()
        .await
        .map_err(|e| JobError::from(Error::from(e)))?;
    load(&mut conn, id, false).await.map_err(JobError::from)
}

pub(super) fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("jpg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("vtt") => "text/vtt",
        _ => "application/octet-stream",
    }
}

/// Every file under `dir`, with its path relative to `dir` (`/`-separated).
pub(super) fn files_under(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((path, rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Uploads every file of `dir` under `prefix`, a few at a time.
pub(super) async fn upload_dir(
    services: &Services,
    dir: &Path,
    prefix: &str,
) -> std::result::Result<usize, JobError> {
    use futures::StreamExt;
    let files = files_under(dir).map_err(|e| JobError::Retryable(format!("local disk: {e}")))?;
    let count = files.len();
    let results: Vec<std::result::Result<(), StorageError>> = futures::stream::iter(files)
        .map(|(path, rel)| async move {
            services
                .storage
                .put_file(&format!("{prefix}{rel}"), &path, content_type(&path))
                .await
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for r in results {
        r.map_err(|e| JobError::Retryable(format!("uploading outputs: {e}")))?;
    }
    Ok(count)
}

/// Runs blocking media work off the async threads, relaying its progress (0.0-1.0) to the job
/// row and the owner's events while it runs.
pub(super) async fn run_blocking<T: Send + 'static>(
    services: &Services,
    row: &MediaRow,
    work: impl FnOnce(&AtomicBool, &mut dyn FnMut(f64)) -> T + Send + 'static,
) -> std::result::Result<T, JobError> {
    let flag = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(flag.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let mut handle = tokio::task::spawn_blocking(move || {
        let mut report = |f: f64| {
            let _ = tx.send(f);
        };
        work(&flag, &mut report)
    });
    let job_id = jobs::current_job().map(|j| j.id);
    loop {
        tokio::select! {
            done = &mut handle => {
                return done.map_err(|e| JobError::Retryable(format!("processing thread failed: {e}")));
            }
            Some(fraction) = rx.recv() => {
                // Keep 100 for the recorded success.
                let percent = (fraction * 100.0).floor().clamp(0.0, 99.0) as u8;
                if let Err(e) = jobs::report_progress(&services.db, percent).await {
                    tracing::debug!(error = %e, "could not record progress");
                }
                publish_event(services, row.owner_id, serde_json::json!({
                    "type": "media.progress", "media_id": row.id, "job_id": job_id, "progress": percent,
                })).await;
            }
        }
    }
}

/// A working folder for one attempt on media `id`, holding its verified source copy (never the
/// upload key, which its presigned URL may still rewrite).
async fn fetch_source(
    services: &Services,
    purpose: &str,
    id: Uuid,
) -> std::result::Result<(WorkDir, PathBuf), JobError> {
    let work = WorkDir::new(purpose, id)?;
    let source = work.path().join("source");
    match services.storage.download_to(&source_key(id), &source).await {
        Ok(_) => Ok((work, source)),
        Err(StorageError::NotFound(_)) => Err(JobError::Permanent(
            "the uploaded file is gone from storage".into(),
        )),
        Err(e) => Err(storage_job_error(e)),
    }
}

/// Job: probe, transcode to the HLS ladder with poster and storyboard, upload, record.
#[tracing::instrument(skip_all, fields(media_id = %job.media_id))]
pub async fn run_transcode(
    services: &Services,
    job: &jobs::TranscodeVideo,
) -> std::result::Result<(), JobError> {
    let Some(row) = load_for_job(services, job.media_id).await? else {
        tracing::info!("the media was deleted; nothing to transcode");
        return Ok(());
    };
    if row.kind() != Kind::Video {
        return Err(JobError::Permanent("this media is not a video".into()));
    }
    match transcode_media(services, &row).await {
        Ok(()) => Ok(()),
        Err(e) => Err(fail_job(services, &row, e).await),
    }
}

pub(super) async fn transcode_media(
    services: &Services,
    row: &MediaRow,
) -> std::result::Result<(), JobError> {
    let id = row.id;
    let (work, source) = fetch_source(services, "transcode", id).await?;
    let max_duration = services.config.media.max_video_duration.as_secs_f64();
    let limits = video_limits(&services.config.media);
    let out_dir = work.path().join("out");
    let started = std::time::Instant::now();
    let (work, result) = run_blocking(services, row, move |cancel, progress| {
        let result = (|| {
            let probe = video::probe_within(&source, &limits)?;
            check_probe(&probe, max_duration)?;
            std::fs::create_dir_all(&out_dir).map_err(MediaError::io)?;
            let out = video::transcode(
                &source,
                &probe,
                &out_dir,
                &video::TranscodeOptions {
                    limits,
                    ..Default::default()
                },
                progress,
                cancel,
            )?;
            Ok::<_, MediaError>((probe, out))
        })();
        (work, result)
    })
    .await?;
    let (probe, out) = result?;
    // A file whose index promises more than its data holds (cut short after the index).
    let encoded = out.renditions.first().map_or(0.0, |r| r.duration_secs);
    if encoded < probe.duration_secs * 0.9 - 1.0 {
        return Err(JobError::Permanent(format!(
            "the video is truncated: only {encoded:.1} s of its {:.1} s could be decoded",
            probe.duration_secs
        )));
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        renditions = out.renditions.len(),
        duration_secs = probe.duration_secs,
        "transcoded"
    );
    let uploaded = upload_dir(services, &work.path().join("out"), &video_prefix(id)).await?;
    drop(work);
    let updated = sqlx::query(
        "UPDATE media SET state = 'ready', duration_secs = $2, width = $3, height = $4,
                rotation = $5, frame_rate = $6, video_codec = $7, audio_codec = $8, bit_rate = $9,
                has_audio = $10, renditions = $11, poster = $12, storyboard = $13, error = NULL,
                processed_at = now(), updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(probe.duration_secs)
    .bind(i32::try_from(probe.width).unwrap_or(i32::MAX))
    .bind(i32::try_from(probe.height).unwrap_or(i32::MAX))
    .bind(i32::try_from(probe.rotation).unwrap_or(0))
    .bind(probe.frame_rate)
    .bind(&probe.video_codec)
    .bind(&probe.audio_codec)
    .bind(probe.bit_rate)
    .bind(probe.has_audio)
    .bind(serde_json::to_value(&out.renditions).unwrap_or_default())
    .bind(
        out.poster
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok()),
    )
    .bind(
        out.storyboard
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok()),
    )
    .execute(&services.db)
    .await
    .map_err(|e| JobError::from(Error::from(e)))?;
    if updated.rows_affected() == 0 {
        // Deleted while processing: the deletion job may already have run; remove what we wrote.
        let _ = services
            .storage
            .delete_prefix(&format!("media/{id}/"))
            .await;
        tracing::info!("the media was deleted while processing; outputs removed");
        return Ok(());
    }
    tracing::info!(uploaded, "video ready");
    // A new processed video changes every enrolled student's course progress.
    if let Some(course_id) = row.course_id {
        let mut conn = services
            .db
            .acquire()
            .await
            .map_err(|e| JobError::from(Error::from(e)))?;
        let job = crate::courses::stats::queue_recompute(&mut conn, course_id, None).await?;
        services.jobs.dispatch(&job).await;
    }
    publish_event(
        services,
        row.owner_id,
        serde_json::json!({"type": "media.ready", "media_id": id}),
    )
    .await;
    Ok(())
}

/// The configured bounds on one video's work.
pub(super) fn video_limits(m: &crate::config::MediaConfig) -> video::VideoLimits {
    video::VideoLimits {
        max_width: m.video_max_width,
        max_height: m.video_max_height,
        max_pixels: m.video_max_pixels,
        max_frame_rate: m.video_max_frame_rate,
        max_duration_secs: m.max_video_duration.as_secs_f64(),
    }
}

pub(super) fn check_probe(
    probe: &video::VideoProbe,
    max_duration: f64,
) -> std::result::Result<(), MediaError> {
    if probe.width < MIN_VIDEO_SIDE || probe.height < MIN_VIDEO_SIDE {
        return Err(MediaError::Invalid(format!(
            "the video is {} × {} pixels; the smallest accepted is {MIN_VIDEO_SIDE} × {MIN_VIDEO_SIDE}",
            probe.width, probe.height
        )));
    }
    if probe.duration_secs <= 0.0 {
        return Err(MediaError::Invalid(
            "the video's duration cannot be determined (the file may be truncated)".into(),
        ));
    }
    if probe.duration_secs > max_duration {
        return Err(MediaError::Invalid(format!(
            "the video lasts {:.0} s; the longest accepted is {max_duration:.0} s",
            probe.duration_secs
        )));
    }
    Ok(())
}

/// Job: decode the image under limits, apply EXIF orientation, make thumbnail and preview.
#[tracing::instrument(skip_all, fields(media_id = %job.media_id))]
pub async fn run_process_image(
    services: &Services,
    job: &jobs::ProcessImage,
) -> std::result::Result<(), JobError> {
    let Some(row) = load_for_job(services, job.media_id).await? else {
        tracing::info!("the media was deleted; nothing to process");
        return Ok(());
    };
    if row.kind() != Kind::Image {
        return Err(JobError::Permanent("this media is not an image".into()));
    }
    match process_image_media(services, &row).await {
        Ok(()) => Ok(()),
        Err(e) => Err(fail_job(services, &row, e).await),
    }
}

pub(super) async fn process_image_media(
    services: &Services,
    row: &MediaRow,
) -> std::result::Result<(), JobError> {
    let id = row.id;
    let (work, source) = fetch_source(services, "image", id).await?;
    let m = &services.config.media;
    let limits = image::ImageLimits {
        max_width: m.image_max_width,
        max_height: m.image_max_height,
        max_pixels: m.image_max_pixels,
    };
    let out_dir = work.path().join("out");
    let (work, result) = run_blocking(services, row, move |_cancel, _progress| {
        let result = std::fs::create_dir_all(&out_dir)
            .map_err(MediaError::io)
            .and_then(|()| image::process(&source, &limits, &out_dir));
        (work, result)
    })
    .await?;
    let out = result?;
    upload_dir(services, &work.path().join("out"), &image_prefix(id)).await?;
    drop(work);
    let updated = sqlx::query(
        "UPDATE media SET state = 'ready', width = $2, height = $3, image = $4, error = NULL,
                          processed_at = now(), updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(i32::try_from(out.width).unwrap_or(i32::MAX))
    .bind(i32::try_from(out.height).unwrap_or(i32::MAX))
    .bind(serde_json::to_value(&out).unwrap_or_default())
    .execute(&services.db)
    .await
    .map_err(|e| JobError::from(Error::from(e)))?;
    if updated.rows_affected() == 0 {
        let _ = services
            .storage
            .delete_prefix(&format!("media/{id}/"))
            .await;
        return Ok(());
    }
    publish_event(
        services,
        row.owner_id,
        serde_json::json!({"type": "media.ready", "media_id": id}),
    )
    .await;
    Ok(())
}

//! Completing an upload: the checks that make the stored bytes a media (size, parts, real type),
//! the frozen copy that is processed, and the processing job that follows.

use super::*;

/// `POST /media/uploads/{id}/complete` body: the parts of a multipart upload.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct CompleteUpload {
    #[serde(default)]
    pub parts: Option<Vec<CompletedPart>>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CompletedPart {
    pub part_number: i32,
    pub etag: String,
}

/// The outcome of completing an upload: the processing job (none for audio and documents, which
/// are ready at once) and the media.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UploadCompleted {
    pub job: Option<JobReference>,
    pub media: MediaView,
}

/// Marks a media failed with a reason; its source object is removed (nothing half-written stays).
pub(super) async fn refuse_upload(
    services: &Services,
    id: Uuid,
    key: &str,
    reason: &str,
) -> Result<()> {
    if let Err(e) = services.storage.delete(key).await {
        tracing::warn!(error = %e, "could not remove a refused upload; the sweep will");
    }
    sqlx::query(
        "UPDATE media SET state = 'failed', error = $2, multipart_upload_id = NULL,
                          upload_expires_at = NULL, updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(&services.db)
    .await?;
    Ok(())
}

/// `POST /media/uploads/{id}/complete`: checks the object exists with the declared size and the
/// declared type (sniffed from its first bytes), then starts processing. Completing again
/// answers with the same job.
#[tracing::instrument(skip_all, fields(media_id = %id))]
pub async fn complete_upload(
    services: &Services,
    caller: &Principal,
    id: Uuid,
    input: CompleteUpload,
) -> Result<UploadCompleted> {
    let mut conn = services.db.acquire().await?;
    let row = load(&mut conn, id, false)
        .await?
        .filter(|r| is_owner(caller, r))
        .ok_or(Error::NotFound("upload"))?;
    drop(conn);
    if row.state != "pending" {
        let job = match row.job_id {
            Some(j) => jobs::get(&services.db, j).await?.map(|v| JobReference {
                id: v.id,
                kind: v.kind.clone(),
                state: v.state,
            }),
            None => None,
        };
        if row.state == "failed" && job.is_none() {
            return Err(Error::Conflict {
                code: "upload_refused",
                message: row
                    .error
                    .unwrap_or_else(|| "this upload was refused".to_owned()),
            });
        }
        let media = view(services, row).await?;
        return Ok(UploadCompleted { job, media });
    }
    let key = row.object_key.clone().unwrap_or_else(|| upload_key(id));
    if let Some(upload_id) = &row.multipart_upload_id {
        let parts = input.parts.unwrap_or_default();
        if parts.is_empty() {
            return Err(Error::invalid(
                "parts",
                "list every uploaded part with its part_number and the etag its PUT answered",
            ));
        }
        let parts: Vec<(i32, String)> =
            parts.into_iter().map(|p| (p.part_number, p.etag)).collect();
        check_parts_total(services, &row, &key, upload_id, &parts).await?;
        match services
            .storage
            .complete_multipart(&key, upload_id, &parts)
            .await
        {
            Ok(()) => {}
            Err(StorageError::Unavailable(e)) => {
                return Err(StorageError::Unavailable(e).into());
            }
            Err(e) => {
                // Parts missing or an ETag wrong: the client may upload again and retry.
                return Err(Error::Conflict {
                    code: "upload_incomplete",
                    message: format!("the parts could not be assembled: {e}"),
                });
            }
        }
        sqlx::query(
            "UPDATE media SET multipart_upload_id = NULL, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .execute(&services.db)
        .await?;
    }
    // Every check below reads the frozen copy, the object processing reads too.
    let source = source_key(id);
    if key != source {
        freeze_upload(services, id, &key, &source).await?;
    }
    let Some(info) = services.storage.head(&source).await? else {
        return Err(not_uploaded());
    };
    let declared = u64::try_from(row.size_bytes).unwrap_or(0);
    if info.size != declared {
        let reason = format!(
            "the uploaded file has {} bytes, not the {declared} bytes declared",
            info.size
        );
        refuse_upload(services, id, &source, &reason).await?;
        return Err(Error::invalid("file_size", reason));
    }
    let head = services.storage.get_head(&source, sniff::SNIFF_LEN).await?;
    let kind = row.kind();
    if let Err(reason) = check_content(&head, &row.mime_type, kind) {
        refuse_upload(services, id, &source, &reason).await?;
        return Err(Error::invalid("file", reason));
    }
    start_processing(services, id, kind, caller.user_id()).await
}

pub(super) fn not_uploaded() -> Error {
    Error::Conflict {
        code: "upload_incomplete",
        message: "the file has not been uploaded yet: send it to the upload URL first".into(),
    }
}

/// Copies the uploaded object to the media's source key and removes the upload key. A presigned
/// PUT cannot be revoked: the client may write the upload key again until its URL expires, so
/// what `/complete` checks and the jobs process is this copy, which no client can write. The row
/// stays locked meanwhile, so concurrent completions freeze once.
pub(super) async fn freeze_upload(
    services: &Services,
    id: Uuid,
    upload: &str,
    source: &str,
) -> Result<()> {
    let mut tx = services.db.begin().await?;
    let row = load(&mut tx, id, true)
        .await?
        .ok_or(Error::NotFound("upload"))?;
    if row.state != "pending" || row.object_key.as_deref() == Some(source) {
        // Frozen by a concurrent completion.
        return Ok(());
    }
    let Some(info) = services.storage.head(upload).await? else {
        return Err(not_uploaded());
    };
    match services.storage.copy(upload, source, info.size).await {
        Ok(()) => {}
        Err(StorageError::NotFound(_)) => return Err(not_uploaded()),
        Err(e) => return Err(e.into()),
    }
    // The URL was signed before the row was inserted, so it is dead `url_ttl` after `created_at`.
    sqlx::query(
        "UPDATE media SET object_key = $2, updated_at = now(),
                upload_key_sweep_at = created_at + make_interval(secs => $3) + interval '30 seconds'
          WHERE id = $1",
    )
    .bind(id)
    .bind(source)
    .bind(services.config.media.url_ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // Strays a later PUT recreates here go with the media (deletion removes `media/{id}/`).
    if let Err(e) = services.storage.delete(upload).await {
        tracing::warn!(error = %e, "could not remove the upload key after freezing it");
    }
    Ok(())
}

/// The parts named at completion must add up to the declared size, before anything is assembled.
/// Fewer bytes: some part is missing, the client may send it and complete again (409). More
/// bytes: the upload outgrew its declaration; it is aborted and the media failed (422).
pub(super) async fn check_parts_total(
    services: &Services,
    row: &MediaRow,
    key: &str,
    upload_id: &str,
    parts: &[(i32, String)],
) -> Result<()> {
    let uploaded = match services.storage.list_parts(key, upload_id).await {
        Ok(uploaded) => uploaded,
        Err(StorageError::Unavailable(e)) => return Err(StorageError::Unavailable(e).into()),
        Err(e) => {
            return Err(Error::Conflict {
                code: "upload_incomplete",
                message: format!("the uploaded parts cannot be listed: {e}"),
            });
        }
    };
    let mut total: u64 = 0;
    let mut named = std::collections::BTreeSet::new();
    for (n, _) in parts {
        if !named.insert(*n) {
            return Err(Error::invalid(
                "parts",
                format!("part {n} is listed more than once"),
            ));
        }
        let Some((_, size)) = uploaded.iter().find(|(u, _)| u == n) else {
            return Err(Error::Conflict {
                code: "upload_incomplete",
                message: format!("part {n} has not been uploaded"),
            });
        };
        total = total.saturating_add(*size);
    }
    let declared = u64::try_from(row.size_bytes).unwrap_or(0);
    if total < declared {
        return Err(Error::Conflict {
            code: "upload_incomplete",
            message: format!(
                "the listed parts hold {total} bytes of the {declared} bytes declared; upload every part"
            ),
        });
    }
    if total > declared {
        let reason = format!(
            "the uploaded parts hold {total} bytes, more than the {declared} bytes declared"
        );
        if let Err(e) = services.storage.abort_multipart(key, upload_id).await {
            tracing::warn!(error = %e, "could not abort an oversized multipart upload; the sweep will");
        }
        refuse_upload(services, row.id, key, &reason).await?;
        return Err(Error::invalid("file_size", reason));
    }
    Ok(())
}

/// The sniffed type must agree with the declared one.
pub(super) fn check_content(
    head: &[u8],
    declared: &str,
    kind: Kind,
) -> std::result::Result<(), String> {
    match sniff::sniff(head) {
        Some(found) if sniff::compatible(declared, &found, kind) => Ok(()),
        Some(found) => Err(format!(
            "the file's content is a {} ({}), not {declared}",
            found.label, found.mime
        )),
        None => Err(format!(
            "the file's content is not a type Lectern accepts (declared as {declared})"
        )),
    }
}

/// Moves a checked upload to processing (with its job) or, for audio and documents, to ready.
pub(super) async fn start_processing(
    services: &Services,
    id: Uuid,
    kind: Kind,
    started_by: Option<Uuid>,
) -> Result<UploadCompleted> {
    let job = match kind {
        Kind::Video => Some(Job::TranscodeVideo(jobs::TranscodeVideo { media_id: id })),
        Kind::Image => Some(Job::ProcessImage(jobs::ProcessImage { media_id: id })),
        Kind::Audio | Kind::Document => None,
    };
    let mut tx = services.db.begin().await?;
    let new_job = match &job {
        Some(job) => Some(jobs::insert(&mut tx, job, started_by, None).await?),
        None => None,
    };
    let updated = sqlx::query(
        "UPDATE media SET state = $2, job_id = $3, upload_expires_at = NULL, error = NULL,
                          processed_at = CASE WHEN $2 = 'ready' THEN now() END, updated_at = now()
          WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(if new_job.is_some() {
        "processing"
    } else {
        "ready"
    })
    .bind(new_job.as_ref().map(|j| j.id))
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        // Completed concurrently: answer with what the other request did.
        tx.rollback().await?;
        let mut conn = services.db.acquire().await?;
        let row = load(&mut conn, id, false)
            .await?
            .ok_or(Error::NotFound("upload"))?;
        drop(conn);
        let job = match row.job_id {
            Some(j) => jobs::get(&services.db, j).await?.map(|v| JobReference {
                id: v.id,
                kind: v.kind.clone(),
                state: v.state,
            }),
            None => None,
        };
        return Ok(UploadCompleted {
            job,
            media: view(services, row).await?,
        });
    }
    tx.commit().await?;
    if let Some(job) = &new_job {
        services.jobs.dispatch(job).await;
    }
    tracing::info!(kind = kind.as_str(), "upload completed");
    let mut conn = services.db.acquire().await?;
    let row = load(&mut conn, id, false)
        .await?
        .ok_or(Error::NotFound("upload"))?;
    drop(conn);
    Ok(UploadCompleted {
        job: new_job.as_ref().map(jobs::NewJob::reference),
        media: view(services, row).await?,
    })
}

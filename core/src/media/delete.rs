//! Deletion of a media and its objects, and the sweeps of abandoned uploads and upload keys.

use super::*;

/// `DELETE /media/{id}`: the row goes now; a job removes every object.
#[tracing::instrument(skip_all, fields(media_id = %id))]
pub async fn delete(services: &Services, caller: &Principal, id: Uuid) -> Result<JobReference> {
    let mut tx = services.db.begin().await?;
    let row = load(&mut tx, id, true)
        .await?
        .filter(|r| is_owner(caller, r))
        .ok_or(Error::NotFound("media"))?;
    let job = remove_row(&mut tx, &row, caller.user_id()).await?;
    // A removed video changes every enrolled student's course progress.
    let recompute = match row.course_id {
        Some(course_id) if row.kind == "video" => Some(
            crate::courses::stats::queue_recompute(&mut tx, course_id, caller.user_id()).await?,
        ),
        _ => None,
    };
    tx.commit().await?;
    services.jobs.dispatch(&job).await;
    if let Some(recompute) = recompute {
        services.jobs.dispatch(&recompute).await;
    }
    tracing::info!("media deleted");
    Ok(job.reference())
}

pub(super) async fn remove_row(
    conn: &mut PgConnection,
    row: &MediaRow,
    by: Option<Uuid>,
) -> Result<jobs::NewJob> {
    sqlx::query("UPDATE courses SET thumbnail_media_id = NULL WHERE thumbnail_media_id = $1")
        .bind(row.id)
        .execute(&mut *conn)
        .await?;
    let deleted = sqlx::query("DELETE FROM media WHERE id = $1")
        .bind(row.id)
        .execute(&mut *conn)
        .await;
    if let Err(sqlx::Error::Database(e)) = &deleted
        && e.code().as_deref() == Some("23503")
    {
        return Err(Error::Conflict {
            code: "media_in_use",
            message: "this media is still used (by a lesson or another record); detach it first"
                .into(),
        });
    }
    deleted?;
    let multipart = match (&row.object_key, &row.multipart_upload_id) {
        (Some(key), Some(upload)) => Some((key.clone(), upload.clone())),
        _ => None,
    };
    jobs::insert(
        conn,
        &Job::DeleteMediaObjects(jobs::DeleteMediaObjects {
            media_id: row.id,
            multipart,
        }),
        by,
        None,
    )
    .await
}

/// Job: removes every object under `media/{id}/` and aborts an open multipart upload.
pub async fn run_delete_objects(
    services: &Services,
    job: &jobs::DeleteMediaObjects,
) -> std::result::Result<(), JobError> {
    if let Some((key, upload)) = &job.multipart {
        match services.storage.abort_multipart(key, upload).await {
            Ok(()) | Err(StorageError::NotFound(_)) => {}
            Err(e) if e.is_transient() => return Err(storage_job_error(e)),
            Err(e) => {
                tracing::warn!(error = %e, "aborting the multipart upload failed; deleting objects anyway")
            }
        }
    }
    let removed = services
        .storage
        .delete_prefix(&format!("media/{}/", job.media_id))
        .await
        .map_err(storage_job_error)?;
    tracing::info!(media_id = %job.media_id, removed, "media objects removed");
    Ok(())
}

/// Removes uploads started and never completed before their expiry: the row now, the objects
/// (and any open multipart upload) through a deletion job. Returns how many.
pub async fn sweep_abandoned(services: &Services) -> Result<usize> {
    let mut tx = services.db.begin().await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM media
          WHERE state = 'pending' AND upload_expires_at < now()
          ORDER BY upload_expires_at LIMIT 100 FOR UPDATE SKIP LOCKED"
    );
    let rows: Vec<MediaRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *tx)
        .await?;
    let mut new_jobs = Vec::with_capacity(rows.len());
    for row in &rows {
        new_jobs.push(remove_row(&mut tx, row, None).await?);
    }
    tx.commit().await?;
    for job in &new_jobs {
        services.jobs.dispatch(job).await;
    }
    if !rows.is_empty() {
        tracing::info!(removed = rows.len(), "removed abandoned uploads");
    }
    Ok(rows.len())
}

/// Removes what a presigned PUT may have written to the upload key after `/complete` froze it,
/// once the URL is dead (see `freeze_upload`). Returns how many media were checked.
pub async fn sweep_upload_keys(services: &Services) -> Result<usize> {
    let mut tx = services.db.begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM media WHERE upload_key_sweep_at < now()
          ORDER BY upload_key_sweep_at LIMIT 100 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await?;
    for id in &ids {
        services.storage.delete(&upload_key(*id)).await?;
    }
    sqlx::query("UPDATE media SET upload_key_sweep_at = NULL WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ids.len())
}

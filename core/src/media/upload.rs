//! Uploads: presigned PUT or multipart straight to storage, and the direct `POST /media`.

use super::*;

/// `POST /media/uploads`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct StartUpload {
    pub file_name: Option<String>,
    pub file_size: Option<i64>,
    pub mime_type: Option<String>,
    pub course_id: Option<Uuid>,
    pub section_id: Option<Uuid>,
    pub title: Option<String>,
}

/// One part of a multipart upload: PUT its bytes to `url`, keep the `ETag` it answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PartUpload {
    pub part_number: i32,
    pub method: String,
    pub url: String,
}

/// How the client sends the file, then completes the upload.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UploadInstructions {
    /// `put`: one PUT of the whole file. `multipart`: every part, then complete with the ETags.
    pub method: String,
    /// For `put`.
    pub request: Option<PresignedRequest>,
    /// For `multipart`: every part has this size except the last.
    pub part_size: Option<u64>,
    pub parts: Vec<PartUpload>,
    /// `POST` here when the bytes are sent (with `{"parts": [{part_number, etag}]}` for multipart).
    pub complete_url: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UploadStarted {
    pub media: MediaView,
    pub upload: UploadInstructions,
}

/// Checks the declared name, size and type against the configuration; returns the kind.
pub(super) fn check_declared(
    services: &Services,
    file_name: Option<&str>,
    size: Option<i64>,
    mime: Option<&str>,
    max_override: Option<u64>,
) -> Result<(Kind, String, String, u64)> {
    let media = &services.config.media;
    let mut fields = FieldErrors::new();
    let name = file_name.map(str::trim).unwrap_or_default();
    let name = name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        fields.add("file_name", "is required");
    } else if name.chars().count() > 255 || name.chars().any(char::is_control) {
        fields.add(
            "file_name",
            "must be at most 255 characters, without control characters",
        );
    }
    let mime = mime
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let kind = if mime.is_empty() {
        fields.add("mime_type", "is required");
        None
    } else {
        match media.kind_of(&mime).and_then(Kind::parse) {
            Some(kind) => Some(kind),
            None => {
                let all: Vec<&str> = media
                    .allowed_types
                    .values()
                    .flatten()
                    .map(String::as_str)
                    .collect();
                fields.add(
                    "mime_type",
                    format!("{mime} is not accepted; accepted types: {}", all.join(", ")),
                );
                None
            }
        }
    };
    let size = match size {
        None => {
            fields.add("file_size", "is required");
            0
        }
        Some(s) if s <= 0 => {
            fields.add("file_size", "must be a positive number of bytes");
            0
        }
        Some(s) => s as u64,
    };
    if let Some(kind) = kind {
        let max = media.max_bytes.get(kind.as_str()).copied().unwrap_or(0);
        let max = max_override.map_or(max, |o| o.min(max));
        if size > max {
            fields.add(
                "file_size",
                format!(
                    "{size} bytes is more than the {max} bytes accepted for a {} file",
                    kind.as_str()
                ),
            );
        }
    }
    fields.into_result()?;
    let kind = kind.ok_or_else(|| Error::invalid("mime_type", "is required"))?;
    Ok((kind, name, mime, size))
}

/// The course and section a media is attached to, checked against the caller (404 when the
/// caller may not see them).
pub(super) async fn check_placement(
    services: &Services,
    caller: &Principal,
    course_id: Option<Uuid>,
    section_id: Option<Uuid>,
) -> Result<(Option<Uuid>, Option<Uuid>)> {
    let user = caller.user_id();
    let owns = |instructor: Uuid| caller.is_admin() || user == Some(instructor);
    let mut course = course_id;
    if let Some(section) = section_id {
        let found: Option<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT s.course_id, c.instructor_id FROM sections s JOIN courses c ON c.id = s.course_id
              WHERE s.id = $1 AND s.deleted_at IS NULL AND c.deleted_at IS NULL",
        )
        .bind(section)
        .fetch_optional(&services.db)
        .await?;
        let (section_course, instructor) = found
            .filter(|(_, instructor)| owns(*instructor))
            .ok_or(Error::NotFound("section"))?;
        if course.is_some_and(|c| c != section_course) {
            return Err(Error::invalid(
                "section_id",
                "the section is not in this course",
            ));
        }
        let _ = instructor;
        course = Some(section_course);
    }
    if let Some(c) = course {
        let instructor: Option<Uuid> = sqlx::query_scalar(
            "SELECT instructor_id FROM courses WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(c)
        .fetch_optional(&services.db)
        .await?;
        if !instructor.is_some_and(owns) {
            return Err(Error::NotFound("course"));
        }
    }
    Ok((course, section_id))
}

pub(super) fn require_uploader(caller: &Principal) -> Result<Uuid> {
    let user = caller.require_user()?;
    if !matches!(user.role, Role::Instructor | Role::Admin) {
        return Err(Error::Forbidden {
            code: "instructors_only",
            message: "only instructors upload media".into(),
        });
    }
    Ok(user.id)
}

/// Only an instructor whose email is verified uploads videos: a video costs minutes of
/// transcoding, and an account nobody can be reached at should not be able to spend them.
pub(super) fn require_verified_for(caller: &Principal, kind: Kind) -> Result<()> {
    let user = caller.require_user()?;
    if kind == Kind::Video && !user.email_verified {
        return Err(Error::Forbidden {
            code: "email_unverified",
            message: "verify your email address before uploading videos".into(),
        });
    }
    Ok(())
}

/// The per-user upload quotas (uploads not completed yet, their declared bytes, and the bytes of
/// every media the user keeps), with `size` more bytes about to be added. Run it under
/// [`lock_quota`] in the transaction that records the upload so concurrent starts cannot both fit.
pub(super) async fn check_quota(
    conn: &mut PgConnection,
    services: &Services,
    owner: Uuid,
    size: u64,
) -> Result<()> {
    let media = &services.config.media;
    let (pending, pending_bytes, stored_bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'pending'),
                coalesce(sum(size_bytes) FILTER (WHERE state = 'pending'), 0)::int8,
                coalesce(sum(size_bytes), 0)::int8
           FROM media WHERE owner_id = $1 AND deleted_at IS NULL",
    )
    .bind(owner)
    .fetch_one(conn)
    .await?;
    let as_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
    let refuse = |message: String| Error::Conflict {
        code: "upload_quota_exceeded",
        message,
    };
    if as_u64(pending) >= media.quota_pending_uploads {
        return Err(refuse(format!(
            "you have {pending} uploads not completed yet, the most allowed at once; complete or delete one first"
        )));
    }
    if as_u64(pending_bytes).saturating_add(size) > media.quota_pending_bytes {
        return Err(refuse(format!(
            "your uploads not completed yet hold {pending_bytes} bytes; with {size} more they would exceed the {} bytes allowed",
            media.quota_pending_bytes
        )));
    }
    if as_u64(stored_bytes).saturating_add(size) > media.quota_stored_bytes {
        return Err(refuse(format!(
            "your media take {stored_bytes} bytes; with {size} more they would exceed your {} bytes of storage",
            media.quota_stored_bytes
        )));
    }
    Ok(())
}

/// Serialises quota checks of one user until the transaction ends.
pub(super) async fn lock_quota(conn: &mut PgConnection, owner: Uuid) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('media_quota:' || $1::text, 0))")
        .bind(owner)
        .execute(conn)
        .await?;
    Ok(())
}

/// A media row about to be inserted as `pending`.
pub(super) struct PendingMedia<'a> {
    id: Uuid,
    owner: Uuid,
    course_id: Option<Uuid>,
    section_id: Option<Uuid>,
    kind: Kind,
    title: &'a str,
    file_name: &'a str,
    mime: &'a str,
    size: u64,
    key: &'a str,
    multipart_upload_id: Option<&'a str>,
    upload_expires_at: Option<DateTime<Utc>>,
}

/// Inserts a pending media row under the owner's quota lock, checking the quotas again inside the
/// transaction so two uploads started at once cannot both slip past them.
pub(super) async fn insert_pending(services: &Services, m: &PendingMedia<'_>) -> Result<()> {
    let mut tx = services.db.begin().await?;
    lock_quota(&mut tx, m.owner).await?;
    check_quota(&mut tx, services, m.owner, m.size).await?;
    sqlx::query(
        "INSERT INTO media (id, owner_id, course_id, section_id, kind, state, title, file_name,
                            mime_type, size_bytes, object_key, multipart_upload_id, upload_expires_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(m.id)
    .bind(m.owner)
    .bind(m.course_id)
    .bind(m.section_id)
    .bind(m.kind.as_str())
    .bind(m.title)
    .bind(m.file_name)
    .bind(m.mime)
    .bind(i64::try_from(m.size).map_err(Error::internal)?)
    .bind(m.key)
    .bind(m.multipart_upload_id)
    .bind(m.upload_expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) fn complete_url(id: Uuid) -> String {
    format!("/api/v1/media/uploads/{id}/complete")
}

/// `POST /media/uploads`: records the media and answers with presigned request(s) for the bytes.
#[tracing::instrument(skip_all, fields(media_id))]
pub async fn start_upload(
    services: &Services,
    caller: &Principal,
    input: StartUpload,
) -> Result<UploadStarted> {
    let owner = require_uploader(caller)?;
    let (kind, file_name, mime, size) = check_declared(
        services,
        input.file_name.as_deref(),
        input.file_size,
        input.mime_type.as_deref(),
        None,
    )?;
    require_verified_for(caller, kind)?;
    let (course_id, section_id) =
        check_placement(services, caller, input.course_id, input.section_id).await?;
    // Fail fast before any storage work; checked again under the lock when the row is recorded.
    check_quota(&mut *services.db.acquire().await?, services, owner, size).await?;
    let media = &services.config.media;
    let id = Uuid::now_v7();
    tracing::Span::current().record("media_id", tracing::field::display(id));
    let key = upload_key(id);
    let ttl = media.url_ttl;
    let expires_at =
        Utc::now() + chrono::Duration::from_std(media.upload_expiry).unwrap_or_default();
    let title = input.title.unwrap_or_else(|| file_name.clone());
    if title.chars().count() > 200 {
        return Err(Error::invalid("title", "must be at most 200 characters"));
    }

    let (instructions, upload_id) = if size >= media.multipart_threshold {
        let mut part_size = media.part_size;
        if size.div_ceil(part_size) > 10_000 {
            part_size = size.div_ceil(10_000).div_ceil(1024 * 1024) * 1024 * 1024;
        }
        let count = size.div_ceil(part_size);
        let upload_id = services.storage.create_multipart(&key, &mime).await?;
        let mut parts = Vec::with_capacity(count as usize);
        for n in 1..=count {
            // Every part but the last is `part_size`; each URL is signed for its exact length.
            let length = part_size.min(size - (n - 1) * part_size);
            let n = i32::try_from(n).map_err(Error::internal)?;
            let p = services
                .storage
                .presign_upload_part(&key, &upload_id, n, length, ttl)
                .await?;
            parts.push(PartUpload {
                part_number: n,
                method: p.method,
                url: p.url,
            });
        }
        (
            UploadInstructions {
                method: "multipart".into(),
                request: None,
                part_size: Some(part_size),
                parts,
                complete_url: complete_url(id),
                expires_at,
            },
            Some(upload_id),
        )
    } else {
        let request = services.storage.presign_put(&key, &mime, size, ttl).await?;
        (
            UploadInstructions {
                method: "put".into(),
                request: Some(request),
                part_size: None,
                parts: Vec::new(),
                complete_url: complete_url(id),
                expires_at,
            },
            None,
        )
    };
    let inserted = insert_pending(
        services,
        &PendingMedia {
            id,
            owner,
            course_id,
            section_id,
            kind,
            title: &title,
            file_name: &file_name,
            mime: &mime,
            size,
            key: &key,
            multipart_upload_id: upload_id.as_deref(),
            upload_expires_at: Some(expires_at),
        },
    )
    .await;
    if let Err(e) = inserted {
        if let Some(upload_id) = &upload_id {
            let _ = services.storage.abort_multipart(&key, upload_id).await;
        }
        return Err(e);
    }
    tracing::info!(
        kind = kind.as_str(),
        size,
        multipart = upload_id.is_some(),
        "upload started"
    );
    let mut conn = services.db.acquire().await?;
    let row = load(&mut conn, id, false)
        .await?
        .ok_or(Error::NotFound("media"))?;
    Ok(UploadStarted {
        media: row.into_view(None),
        upload: instructions,
    })
}

/// A file received by `POST /media` and spooled to local disk by the API.
#[derive(Debug)]
pub struct DirectUpload {
    pub path: PathBuf,
    pub file_name: Option<String>,
    /// The part's `Content-Type`; when absent (or `application/octet-stream`) the sniffed type.
    pub mime_type: Option<String>,
    pub size: u64,
    pub course_id: Option<Uuid>,
    pub section_id: Option<Uuid>,
    pub title: Option<String>,
}

/// `POST /media`: a small file sent through the API, with the same limits and checks.
#[tracing::instrument(skip_all, fields(media_id))]
pub async fn direct_upload(
    services: &Services,
    caller: &Principal,
    upload: DirectUpload,
) -> Result<UploadCompleted> {
    let owner = require_uploader(caller)?;
    let head = {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(&upload.path)
            .await
            .map_err(Error::internal)?;
        let mut head = vec![0u8; sniff::SNIFF_LEN];
        let mut filled = 0;
        while filled < head.len() {
            let n = file
                .read(&mut head[filled..])
                .await
                .map_err(Error::internal)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        head.truncate(filled);
        head
    };
    let declared = upload
        .mime_type
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty() && *m != "application/octet-stream")
        .map(str::to_owned)
        .or_else(|| sniff::sniff(&head).map(|s| s.mime.to_owned()));
    let (kind, file_name, mime, size) = check_declared(
        services,
        upload.file_name.as_deref(),
        i64::try_from(upload.size).ok(),
        declared.as_deref(),
        Some(services.config.media.direct_max_bytes),
    )?;
    if let Err(reason) = check_content(&head, &mime, kind) {
        return Err(Error::invalid("file", reason));
    }
    require_verified_for(caller, kind)?;
    let (course_id, section_id) =
        check_placement(services, caller, upload.course_id, upload.section_id).await?;
    let id = Uuid::now_v7();
    tracing::Span::current().record("media_id", tracing::field::display(id));
    let key = source_key(id);
    let title = upload.title.unwrap_or_else(|| file_name.clone());
    if title.chars().count() > 200 {
        return Err(Error::invalid("title", "must be at most 200 characters"));
    }
    check_quota(&mut *services.db.acquire().await?, services, owner, size).await?;
    services.storage.put_file(&key, &upload.path, &mime).await?;
    let inserted = insert_pending(
        services,
        &PendingMedia {
            id,
            owner,
            course_id,
            section_id,
            kind,
            title: &title,
            file_name: &file_name,
            mime: &mime,
            size,
            key: &key,
            multipart_upload_id: None,
            upload_expires_at: None,
        },
    )
    .await;
    if let Err(e) = inserted {
        let _ = services.storage.delete(&key).await;
        return Err(e);
    }
    start_processing(services, id, kind, Some(owner)).await
}

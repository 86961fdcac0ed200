//! In-app notifications and the fan-out of one event to many users (an instructor's followers
//! when a course is published).

use uuid::Uuid;

use crate::Services;
use crate::error::Result;
use crate::jobs::{
    self, FanOutEvent, FanOutNotifications, Job, JobError, SendEmail, SendNotificationDigests,
};
use crate::mail::EmailTemplate;

/// Followers handled per transaction.
pub const FAN_OUT_BATCH: i64 = 1000;

struct Announced {
    title: String,
    slug: String,
    instructor_id: Uuid,
    instructor_name: String,
}

struct Recipient {
    id: Uuid,
    email: String,
    full_name: String,
    notify_email: bool,
    notify_in_app: bool,
}

/// The fan-out job: every batch commits its notifications, its mail jobs and the cursor together,
/// so a crash or retry resumes after the last committed batch without telling anyone twice.
pub async fn fan_out(services: &Services, job: &FanOutNotifications) -> Result<(), JobError> {
    match job.event {
        FanOutEvent::CoursePublished { course_id } => {
            course_published(services, course_id, job.after_user_id)
                .await
                .map_err(JobError::from)
        }
        FanOutEvent::Enrolled {
            enrollment_id,
            event_id,
        } => enrolled(services, enrollment_id, event_id)
            .await
            .map_err(JobError::from),
    }
}

/// Tells an instructor that a student enrolled in their course (in-app, if they want it).
async fn enrolled(services: &Services, enrollment_id: Uuid, event_id: Uuid) -> Result<()> {
    let created = sqlx::query_as!(
        Created,
        r#"INSERT INTO notifications (id, user_id, type, title, message, data, event_key)
         SELECT gen_random_uuid(), c.instructor_id, 'new_enrollment', 'New student in ' || c.title,
                s.full_name || ' enrolled in ' || c.title,
                jsonb_build_object('course_id', c.id, 'enrollment_id', e.id, 'student_id', s.id),
                'enrolled:' || $2::text
           FROM enrollments e
           JOIN courses c ON c.id = e.course_id
           JOIN users s ON s.id = e.user_id
           JOIN users i ON i.id = c.instructor_id
          WHERE e.id = $1 AND i.notify_in_app AND i.status = 'active'
         ON CONFLICT (user_id, event_key) WHERE event_key IS NOT NULL DO NOTHING
         RETURNING id, user_id, type AS kind, title, message, data, created_at"#,
        enrollment_id,
        event_id.to_string(),
    )
    .fetch_all(&services.db)
    .await?;
    push(services, &created).await;
    Ok(())
}

/// A notification just stored, for the real-time push.
struct Created {
    id: Uuid,
    user_id: Uuid,
    kind: String,
    title: String,
    message: String,
    data: serde_json::Value,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// Sends stored notifications to their users' open WebSockets, whichever API process holds them.
async fn push(services: &Services, created: &[Created]) {
    let envelopes: Vec<crate::events::Envelope> = created
        .iter()
        .map(|n| crate::events::Envelope {
            user_id: n.user_id,
            event: serde_json::json!({
                "type": "notification",
                "notification": {
                    "id": n.id, "type": n.kind, "title": n.title, "message": n.message,
                    "data": n.data, "read": false, "created_at": n.created_at,
                }
            }),
        })
        .collect();
    crate::events::publish(services, &envelopes).await;
}

async fn course_published(
    services: &Services,
    course_id: Uuid,
    start_after: Option<Uuid>,
) -> Result<()> {
    let course = sqlx::query_as!(
        Announced,
        "SELECT c.title, c.slug, c.instructor_id, u.full_name AS instructor_name
           FROM courses c JOIN users u ON u.id = c.instructor_id
          WHERE c.id = $1 AND c.status = 'published' AND c.deleted_at IS NULL",
        course_id,
    )
    .fetch_optional(&services.db)
    .await?;
    // Unpublished or deleted since: there is nothing to announce any more.
    let Some(course) = course else { return Ok(()) };
    let event_key = format!("course_published:{course_id}");
    let link = crate::links::course(&services.config, &course.slug);
    let title = format!("New course by {}", course.instructor_name);
    let message = format!("{} is now available", course.title);
    let data = serde_json::json!({ "course_id": course_id, "slug": course.slug });
    loop {
        let mut tx = services.db.begin().await?;
        sqlx::query!(
            "INSERT INTO fanout_cursors (event_key, after_user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            event_key,
            start_after,
        )
        .execute(&mut *tx)
        .await?;
        let cursor = sqlx::query!(
            r#"SELECT after_user_id, finished_at IS NOT NULL AS "finished!"
                 FROM fanout_cursors WHERE event_key = $1 FOR UPDATE"#,
            event_key,
        )
        .fetch_one(&mut *tx)
        .await?;
        let after = cursor.after_user_id;
        if cursor.finished {
            return Ok(());
        }
        let batch = sqlx::query_as!(
            Recipient,
            "SELECT u.id, u.email, u.full_name, u.notify_email, u.notify_in_app
               FROM follows f JOIN users u ON u.id = f.follower_id
              WHERE f.instructor_id = $1 AND ($2::uuid IS NULL OR f.follower_id > $2) AND u.status = 'active'
              ORDER BY f.follower_id LIMIT $3",
            course.instructor_id,
            after,
            FAN_OUT_BATCH,
        )
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = batch.last().map(|r| r.id) else {
            sqlx::query!(
                "UPDATE fanout_cursors SET finished_at = now(), updated_at = now() WHERE event_key = $1",
                event_key,
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(());
        };
        let in_app: Vec<Uuid> = batch
            .iter()
            .filter(|r| r.notify_in_app)
            .map(|r| r.id)
            .collect();
        let created = sqlx::query_as!(
            Created,
            "INSERT INTO notifications (id, user_id, type, title, message, data, event_key)
             SELECT gen_random_uuid(), u, 'course_published', $2, $3, $4, $5 FROM unnest($1::uuid[]) AS u
             ON CONFLICT (user_id, event_key) WHERE event_key IS NOT NULL DO NOTHING
             RETURNING id, user_id, type AS kind, title, message, data, created_at",
            &in_app,
            title,
            message,
            data,
            event_key,
        )
        .fetch_all(&mut *tx)
        .await?;
        // Bulk mail is spread over time: each message gets the next free slot of the stream.
        let wanting: Vec<&Recipient> = batch.iter().filter(|r| r.notify_email).collect();
        let slots = reserve_bulk_slots(services, &mut tx, wanting.len()).await?;
        let mut mails = Vec::new();
        for (i, r) in wanting.into_iter().enumerate() {
            let run_at = slots.at(i);
            let mut vars = serde_json::Map::new();
            vars.insert("full_name".into(), r.full_name.clone().into());
            vars.insert(
                "instructor_name".into(),
                course.instructor_name.clone().into(),
            );
            vars.insert("course_title".into(), course.title.clone().into());
            vars.insert("link".into(), link.clone().into());
            vars.insert(
                "unsubscribe_url".into(),
                crate::accounts::unsubscribe_url(services, r.id).into(),
            );
            let job = Job::SendEmail(SendEmail {
                to: r.email.clone(),
                template: EmailTemplate::CoursePublished,
                vars,
            });
            mails.push(jobs::insert(&mut tx, &job, None, Some(run_at)).await?);
        }
        sqlx::query!(
            "UPDATE fanout_cursors SET after_user_id = $2, delivered = delivered + $3, updated_at = now()
              WHERE event_key = $1",
            event_key,
            last,
            batch.len() as i64,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        push(services, &created).await;
        for mail in &mails {
            services.jobs.dispatch(mail).await;
        }
        if (batch.len() as i64) < FAN_OUT_BATCH {
            sqlx::query!(
                "UPDATE fanout_cursors SET finished_at = now() WHERE event_key = $1",
                event_key,
            )
            .execute(&services.db)
            .await?;
            return Ok(());
        }
    }
}

/// Send times for `n` bulk messages, reserved on the shared `bulk_mail` stream so that at most
/// `MAIL_BULK_PER_MINUTE` leave a minute across every worker and job.
struct BulkSlots {
    first: chrono::DateTime<chrono::Utc>,
    spacing_ms: f64,
}

impl BulkSlots {
    fn at(&self, i: usize) -> chrono::DateTime<chrono::Utc> {
        self.first + chrono::Duration::milliseconds((self.spacing_ms * i as f64) as i64)
    }
}

async fn reserve_bulk_slots(
    services: &Services,
    conn: &mut sqlx::PgConnection,
    n: usize,
) -> Result<BulkSlots> {
    let spacing_ms = 60_000.0 / f64::from(services.config.mail.bulk_per_minute.max(1));
    let first = sqlx::query_scalar!(
        r#"UPDATE send_slots s SET next_at = greatest(s.next_at, now()) + $1 * interval '1 millisecond'
             FROM (SELECT greatest(next_at, now()) AS slot FROM send_slots WHERE name = 'bulk_mail' FOR UPDATE) prev
            WHERE s.name = 'bulk_mail' RETURNING prev.slot AS "slot!""#,
        spacing_ms * n as f64,
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(BulkSlots { first, spacing_ms })
}

/// Users handled per transaction by the digest job.
pub const DIGEST_BATCH: i64 = 500;
/// Notifications listed in one digest (the rest are counted).
pub const DIGEST_ITEMS: i64 = 5;

struct DigestRecipient {
    id: Uuid,
    email: String,
    full_name: String,
    since: String,
    total: i64,
    latest: chrono::DateTime<chrono::Utc>,
    items: serde_json::Value,
}

/// The digest job: every user with mail notifications on and unread notifications newer than
/// their last digest gets one summary, on the throttled bulk stream. Each batch commits its mail
/// jobs with the users' digest cursors, so a retried run tells nobody twice.
pub async fn send_digests(services: &Services) -> Result<(), JobError> {
    run_digests(services).await.map_err(JobError::from)
}

async fn run_digests(services: &Services) -> Result<()> {
    let link = crate::links::notifications(&services.config);
    let mut after: Option<Uuid> = None;
    let mut sent = 0usize;
    loop {
        let mut tx = services.db.begin().await?;
        let batch = sqlx::query_as!(
            DigestRecipient,
            r#"WITH due AS (
                 SELECT u.id, u.email, u.full_name, coalesce(d.through, '-infinity') AS through,
                        to_char(coalesce(d.sent_at, u.created_at) AT TIME ZONE 'UTC', 'FMMonth FMDD, YYYY') AS since
                   FROM users u LEFT JOIN digest_cursors d ON d.user_id = u.id
                  WHERE u.notify_email AND u.status = 'active' AND ($1::uuid IS NULL OR u.id > $1)
                    AND EXISTS (SELECT 1 FROM notifications n
                                 WHERE n.user_id = u.id AND n.read_at IS NULL
                                   AND n.created_at > coalesce(d.through, '-infinity'))
                  ORDER BY u.id LIMIT $2
                    FOR UPDATE OF u SKIP LOCKED)
             SELECT due.id AS "id!", due.email AS "email!", due.full_name AS "full_name!",
                    due.since AS "since!", x.total AS "total!", x.latest AS "latest!",
                    coalesce((SELECT jsonb_agg(jsonb_build_object('title', t.title, 'message', t.message)
                                               ORDER BY t.created_at DESC, t.id DESC)
                                FROM (SELECT id, title, message, created_at FROM notifications
                                       WHERE user_id = due.id AND read_at IS NULL AND created_at > due.through
                                       ORDER BY created_at DESC, id DESC LIMIT $3) t), '[]') AS "items!"
               FROM due CROSS JOIN LATERAL (
                    SELECT count(*) AS total, max(n.created_at) AS latest FROM notifications n
                     WHERE n.user_id = due.id AND n.read_at IS NULL AND n.created_at > due.through) x
              ORDER BY due.id"#,
            after,
            DIGEST_BATCH,
            DIGEST_ITEMS,
        )
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = batch.last().map(|r| r.id) else {
            break;
        };
        let slots = reserve_bulk_slots(services, &mut tx, batch.len()).await?;
        let mut mails = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            let mut vars = serde_json::Map::new();
            vars.insert("full_name".into(), r.full_name.clone().into());
            vars.insert("total".into(), r.total.into());
            vars.insert("since".into(), r.since.clone().into());
            vars.insert("items".into(), r.items.clone());
            vars.insert("link".into(), link.clone().into());
            vars.insert(
                "unsubscribe_url".into(),
                crate::accounts::unsubscribe_url(services, r.id).into(),
            );
            let job = Job::SendEmail(SendEmail {
                to: r.email.clone(),
                template: EmailTemplate::NotificationDigest,
                vars,
            });
            mails.push(jobs::insert(&mut tx, &job, None, Some(slots.at(i))).await?);
        }
        sqlx::query!(
            "INSERT INTO digest_cursors (user_id, through, sent_at)
             SELECT u, t, now() FROM unnest($1::uuid[], $2::timestamptz[]) AS x(u, t)
             ON CONFLICT (user_id) DO UPDATE SET through = EXCLUDED.through, sent_at = EXCLUDED.sent_at",
            &batch.iter().map(|r| r.id).collect::<Vec<_>>(),
            &batch.iter().map(|r| r.latest).collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for mail in &mails {
            services.jobs.dispatch(mail).await;
        }
        sent += batch.len();
        if (batch.len() as i64) < DIGEST_BATCH {
            break;
        }
        after = Some(last);
    }
    tracing::info!(sent, "queued notification digests");
    Ok(())
}

/// Queues the daily digest run (08:00 UTC) when it is due, once across the fleet.
pub async fn schedule_digests(services: &Services) -> Result<bool> {
    jobs::queue_when_due(
        services,
        "UPDATE schedules
            SET next_run_at = (SELECT CASE WHEN t > now() THEN t ELSE t + interval '1 day' END
                                 FROM (SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                                              + interval '8 hours' AS t) today)
          WHERE name = 'notification_digest' AND next_run_at <= now()
          RETURNING name",
        &Job::SendNotificationDigests(SendNotificationDigests {}),
    )
    .await
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct NotificationView {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub message: String,
    pub data: serde_json::Value,
    pub read: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The caller's notifications, newest first; `unread` keeps only those not yet read.
pub async fn list(
    services: &Services,
    caller: &crate::auth::Principal,
    unread: bool,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<crate::page::Page<NotificationView>> {
    let user = caller.require_user()?;
    let limit = crate::page::limit(limit);
    let before: Option<(chrono::DateTime<chrono::Utc>, Uuid)> = cursor
        .map(|c| crate::page::decode_cursor(&services.config.jwt_secret, c))
        .transpose()?;
    let items = sqlx::query_as!(
        NotificationView,
        r#"SELECT id, type AS kind, title, message, data, read_at IS NOT NULL AS "read!", created_at
             FROM notifications
            WHERE user_id = $1 AND (NOT $2 OR read_at IS NULL)
              AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
            ORDER BY created_at DESC, id DESC LIMIT $5"#,
        user.id,
        unread,
        before.map(|b| b.0),
        before.map(|b| b.1),
        limit,
    )
    .fetch_all(&services.db)
    .await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| {
            items.last().map(|n| {
                crate::page::encode_cursor(&services.config.jwt_secret, &(n.created_at, n.id))
            })
        })
        .flatten();
    Ok(crate::page::Page { items, next_cursor })
}

#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// Notifications to mark as read; ids that are not the caller's are ignored.
    #[serde(default)]
    pub ids: Vec<Uuid>,
    /// Mark every notification of the caller as read.
    #[serde(default)]
    pub all: bool,
}

/// Marks the caller's notifications as read; returns how many changed. Someone else's ids
/// change nothing and reveal nothing.
pub async fn mark_read(
    services: &Services,
    caller: &crate::auth::Principal,
    input: &MarkRead,
) -> Result<u64> {
    let user = caller.require_user()?;
    if !input.all && input.ids.is_empty() {
        return Err(crate::Error::invalid(
            "ids",
            "give the ids to mark as read, or all: true",
        ));
    }
    if input.ids.len() > 1000 {
        return Err(crate::Error::invalid("ids", "at most 1000 ids at once"));
    }
    let done = sqlx::query!(
        "UPDATE notifications SET read_at = now()
          WHERE user_id = $1 AND read_at IS NULL AND ($2 OR id = ANY($3))",
        user.id,
        input.all,
        &input.ids,
    )
    .execute(&services.db)
    .await?;
    Ok(done.rows_affected())
}

pub async fn unread_count(services: &Services, caller: &crate::auth::Principal) -> Result<i64> {
    let user = caller.require_user()?;
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "unread!" FROM notifications WHERE user_id = $1 AND read_at IS NULL"#,
        user.id,
    )
    .fetch_one(&services.db)
    .await?)
}

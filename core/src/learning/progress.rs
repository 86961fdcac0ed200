//! Watch progress: the player's heartbeat, the hottest write path of the product.
//!
//! A heartbeat says where playback is now (`last_position`) and how many seconds of video were
//! played since the previous heartbeat (`watch_time`). The interval between the two is added to
//! the set of seconds covered (an `int4multirange`, merged in SQL), so seeking to the end covers
//! nothing and rewatching a part counts once. A video completes when 90 % of it is covered; the
//! client's own "completed" flag is not trusted.
//!
//! One short transaction per heartbeat: a single upsert of the student's row for the video,
//! which merges the interval, refuses coverage growing faster than the wall time allows (since
//! the previous heartbeat, and since the first one), and reports whether this heartbeat
//! completed the video. Only then is the enrollment locked and the course's progress
//! recomputed, so completing a course happens once whatever the concurrency, and queues the
//! certificate with it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

use super::certificates;
use crate::Services;
use crate::accounts;
use crate::auth::{Principal, SignedUser};
use crate::courses::stats;
use crate::error::{Error, FieldErrors, Result};
use crate::jobs::NewJob;

/// A video is complete once this share of it has been watched.
pub const COMPLETION_SHARE: f64 = 0.9;
/// Longest watch time one heartbeat may report (players send one every 5 to 15 seconds).
pub const MAX_HEARTBEAT_SECS: f64 = 30.0;
/// Coverage cannot grow faster than playback at 2× speed: what one heartbeat adds is bounded by
/// the wall time since the previous heartbeat (plus a few seconds for rounding to whole seconds
/// and network jitter), and the total by the wall time since the first heartbeat (plus one
/// heartbeat's worth). A paused viewer therefore banks no credit. Replayed or concurrent
/// heartbeats add no coverage, so they pass.
const MAX_PLAYBACK_RATE: f64 = 2.0;
const SLACK_SECS: f64 = MAX_HEARTBEAT_SECS;
/// Slack of the bound per heartbeat. Together with the bound since the first heartbeat it keeps
/// a client sending heartbeats back to back from banking more than a heartbeat's worth.
pub const HEARTBEAT_SLACK_SECS: f64 = 5.0;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct Heartbeat {
    /// Playback position now, in seconds from the start.
    pub last_position: f64,
    /// Seconds of video played since the previous heartbeat.
    pub watch_time: f64,
    /// Accepted for compatibility and ignored: completion is computed from what was watched.
    #[serde(default)]
    pub completed: Option<bool>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VideoProgressView {
    pub media_id: Uuid,
    pub last_position: f64,
    /// Seconds of the video covered at least once.
    pub watched_secs: i32,
    pub duration_secs: f64,
    pub completed: bool,
    pub completed_at: Option<DateTime<Utc>>,
    /// The course's progress after this heartbeat (0 to 100).
    pub course_progress: f64,
    pub course_completed: bool,
}

/// What the fast heartbeat statement returns when it applied the heartbeat.
struct FastBeat {
    covered: i32,
    last_position: f64,
    completed_at: Option<DateTime<Utc>>,
    enrollment_id: Uuid,
    course_progress: f64,
    enrollment_status: String,
    duration_secs: f64,
}

/// What the full path's statement returns: the video and enrollment it found, and the upserted
/// progress (absent: the heartbeat was refused).
struct Beat {
    duration_secs: f64,
    course_id: Uuid,
    enrollment_id: Uuid,
    course_progress: f64,
    enrollment_status: String,
    covered: Option<i32>,
    last_position: Option<f64>,
    completed_at: Option<DateTime<Utc>>,
    just_completed: Option<bool>,
}

fn check(hb: &Heartbeat) -> Result<()> {
    let mut fields = FieldErrors::new();
    if !hb.last_position.is_finite() || hb.last_position < 0.0 {
        fields.add("last_position", "must be a number of seconds, 0 or more");
    }
    if !hb.watch_time.is_finite() || hb.watch_time < 0.0 {
        fields.add("watch_time", "must be a number of seconds, 0 or more");
    } else if hb.watch_time > MAX_HEARTBEAT_SECS {
        fields.add(
            "watch_time",
            format!("must be at most {MAX_HEARTBEAT_SECS} seconds per heartbeat"),
        );
    }
    fields.into_result()?;
    if hb.watch_time > hb.last_position + 1.0 {
        return Err(Error::invalid(
            "watch_time",
            "cannot be more than the playback position",
        ));
    }
    Ok(())
}

fn past_the_end(duration: f64) -> Error {
    Error::invalid(
        "last_position",
        format!("is past the end of the video ({duration:.1} s)"),
    )
}

/// Records one heartbeat of the caller watching a video of a course they are enrolled in.
///
/// Nearly every heartbeat takes the fast path (see [`Batcher`]): an UPDATE of the row of an
/// earlier heartbeat, which checks the caller's session and that the video is still theirs to
/// watch, and merges the interval, but only when that neither completes the video nor breaks a
/// bound. Every other heartbeat (the first of a video, one that completes it, one refused, or a
/// caller whose session has ended) takes the full path, durable, which tells them apart.
pub async fn heartbeat(
    services: &Services,
    caller: &SignedUser,
    media_id: Uuid,
    hb: &Heartbeat,
) -> Result<VideoProgressView> {
    check(hb)?;
    let Some(fast) = services.heartbeats.submit(caller, media_id, hb).await else {
        accounts::require_live_session(services, caller).await?;
        return full_heartbeat(services, caller.id, media_id, hb).await;
    };
    let (course_progress, course_completed) =
        if fast.completed_at.is_some() && fast.enrollment_status != "completed" {
            // The enrollment was read in the statement's snapshot. When the update waited on the
            // row lock of a transaction that completed this video (and maybe the course), that
            // read is older than the completion it then saw; a new statement sees the commit.
            reread_enrollment(&services.db, fast.enrollment_id).await?
        } else {
            (fast.course_progress, fast.enrollment_status == "completed")
        };
    Ok(VideoProgressView {
        media_id,
        last_position: fast.last_position,
        watched_secs: fast.covered,
        duration_secs: fast.duration_secs,
        completed: fast.completed_at.is_some(),
        completed_at: fast.completed_at,
        course_progress,
        course_completed,
    })
}

/// Most heartbeats in one batch; more wait for the next.
const MAX_BATCH: usize = 256;
/// Batches applied at once, each on its own connection.
const BATCHES_IN_FLIGHT: usize = 4;

struct Pending {
    user: SignedUser,
    media_id: Uuid,
    last_position: f64,
    watch_time: f64,
    reply: oneshot::Sender<Option<FastBeat>>,
}

/// The fast path of heartbeats, applied in batches: the heartbeats that arrive while earlier
/// batches are being applied go together in one UPDATE (one statement, one commit, one round
/// trip), so the per-statement cost of PostgreSQL is shared under load, and a lone heartbeat
/// waits for no timer. Each heartbeat is answered once its batch has committed, durably (one
/// WAL flush per batch, so asynchronous commit would buy little here). A heartbeat the batch did
/// not apply (or a batch that failed) is answered `None` and takes the full path on its own.
#[derive(Clone, Debug)]
pub struct Batcher {
    queue: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the batching task; must run inside a Tokio runtime.
    pub fn start(db: PgPool) -> Batcher {
        let (queue, pending) = mpsc::channel(16 * MAX_BATCH);
        tokio::spawn(run_batches(db, pending));
        Batcher { queue }
    }

    async fn submit(&self, user: &SignedUser, media_id: Uuid, hb: &Heartbeat) -> Option<FastBeat> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            user: *user,
            media_id,
            last_position: hb.last_position,
            watch_time: hb.watch_time,
            reply,
        };
        self.queue.send(pending).await.ok()?;
        answer.await.ok().flatten()
    }
}

async fn run_batches(db: PgPool, mut pending: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = pending.recv().await {
        // Wait for a free slot before gathering, so that heartbeats arriving meanwhile join.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let db = db.clone();
        let span = tracing::debug_span!("heartbeat_batch", heartbeats = batch.len());
        tokio::spawn(
            async move {
                apply_batch(&db, batch).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

async fn apply_batch(db: &PgPool, mut batch: Vec<Pending>) {
    // Rows are locked in one order by every batch, and a second heartbeat of the same player
    // and video (which one UPDATE cannot apply twice) takes the full path.
    batch.sort_by_key(|p| (p.user.id, p.media_id));
    let mut unique: Vec<Pending> = Vec::with_capacity(batch.len());
    for p in batch {
        match unique.last() {
            Some(last) if last.user.id == p.user.id && last.media_id == p.media_id => {
                let _ = p.reply.send(None);
            }
            _ => unique.push(p),
        }
    }
    let index: Vec<i32> = (0..).take(unique.len()).collect();
    let users: Vec<Uuid> = unique.iter().map(|p| p.user.id).collect();
    let sessions: Vec<Uuid> = unique.iter().map(|p| p.user.session_id).collect();
    let media: Vec<Uuid> = unique.iter().map(|p| p.media_id).collect();
    let positions: Vec<f64> = unique.iter().map(|p| p.last_position).collect();
    let watched: Vec<f64> = unique.iter().map(|p| p.watch_time).collect();
    let applied = sqlx::query!(
        r#"UPDATE video_progress vp SET
                covered = vp.covered + w.watched,
                last_position = w.position,
                watch_time = vp.watch_time + w.watch_time,
                last_heartbeat_at = now()
           FROM (SELECT b.i, b.user_id, b.session_id, b.media_id, b.watch_time,
                        m.duration_secs, m.course_id, least(b.position, m.duration_secs) AS position,
                        int4multirange(int4range(
                            round(greatest(least(b.position, m.duration_secs) - b.watch_time, 0))::int,
                            round(least(b.position, m.duration_secs))::int)) AS watched
                   FROM unnest($1::int4[], $2::uuid[], $3::uuid[], $4::uuid[], $5::float8[], $6::float8[])
                            AS b(i, user_id, session_id, media_id, position, watch_time)
                   JOIN media m ON m.id = b.media_id AND m.kind = 'video' AND m.state = 'ready'
                               AND m.deleted_at IS NULL AND m.duration_secs > 0
                               AND b.position <= m.duration_secs + 1
                   JOIN sections s ON s.id = m.section_id AND s.deleted_at IS NULL) w,
                enrollments e, sessions se, users u
          WHERE vp.user_id = w.user_id AND vp.media_id = w.media_id
            AND e.user_id = w.user_id AND e.course_id = w.course_id
            AND e.status IN ('active', 'completed')
            AND se.id = w.session_id AND se.user_id = w.user_id AND se.revoked_at IS NULL
            AND se.expires_at > now()
            AND u.id = w.user_id AND u.status = 'active'
            AND covered_secs(vp.covered + w.watched)
                <= $8::float8 * extract(epoch FROM now() - vp.first_watched_at) + $9::float8
            AND covered_secs(vp.covered + w.watched) - vp.watched_secs
                <= $8::float8 * greatest(extract(epoch FROM now() - vp.last_heartbeat_at), 0) + $10::float8
            AND (vp.completed_at IS NOT NULL
                 OR covered_secs(vp.covered + w.watched) < $7::float8 * w.duration_secs)
         RETURNING w.i AS "i!", vp.watched_secs AS "covered!", vp.last_position AS "last_position!",
                   vp.completed_at AS "completed_at?", e.id AS "enrollment_id!",
                   e.progress::float8 AS "course_progress!", e.status AS "enrollment_status!",
                   w.duration_secs AS "duration_secs!""#,
        &index,
        &users,
        &sessions,
        &media,
        &positions,
        &watched,
        COMPLETION_SHARE,
        MAX_PLAYBACK_RATE,
        SLACK_SECS,
        HEARTBEAT_SLACK_SECS,
    )
    .fetch_all(db)
    .await;
    let mut answers: Vec<Option<FastBeat>> = unique.iter().map(|_| None).collect();
    match applied {
        Ok(rows) => {
            for row in rows {
                if let Some(slot) = usize::try_from(row.i).ok().and_then(|i| answers.get_mut(i)) {
                    *slot = Some(FastBeat {
                        covered: row.covered,
                        last_position: row.last_position,
                        completed_at: row.completed_at,
                        enrollment_id: row.enrollment_id,
                        course_progress: row.course_progress,
                        enrollment_status: row.enrollment_status,
                        duration_secs: row.duration_secs,
                    });
                }
            }
        }
        Err(error) => {
            tracing::warn!(%error, heartbeats = unique.len(), "heartbeat batch failed; each takes the full path");
        }
    }
    for (p, answer) in unique.into_iter().zip(answers) {
        let _ = p.reply.send(answer);
    }
}

async fn reread_enrollment(
    conn: impl sqlx::PgExecutor<'_>,
    enrollment_id: Uuid,
) -> Result<(f64, bool)> {
    let row = sqlx::query!(
        r#"SELECT progress::float8 AS "progress!", status FROM enrollments WHERE id = $1"#,
        enrollment_id,
    )
    .fetch_one(conn)
    .await?;
    Ok((row.progress, row.status == "completed"))
}

/// The full path of a heartbeat (the session is already checked): one transaction that finds the
/// video, refuses a position past its end or coverage growing faster than wall time allows,
/// merges the interval, and, when the video completes, recomputes the course's progress and
/// completes the enrollment at 100 % (queueing the certificate and the course's statistics).
async fn full_heartbeat(
    services: &Services,
    user_id: Uuid,
    media_id: Uuid,
    hb: &Heartbeat,
) -> Result<VideoProgressView> {
    let mut tx = services.db.begin().await?;
    let beat = sqlx::query_as!(
        Beat,
        r#"WITH target AS (
             SELECT m.duration_secs, m.course_id, e.id AS enrollment_id,
                    e.progress::float8 AS course_progress, e.status AS enrollment_status,
                    least($3::float8, m.duration_secs) AS position
               FROM media m
               JOIN sections s ON s.id = m.section_id AND s.deleted_at IS NULL
               JOIN enrollments e ON e.course_id = m.course_id AND e.user_id = $1
                                 AND e.status IN ('active', 'completed')
              WHERE m.id = $2 AND m.kind = 'video' AND m.state = 'ready' AND m.deleted_at IS NULL
                AND m.duration_secs > 0),
              span AS (
             SELECT t.*, int4multirange(int4range(round(greatest(t.position - $4::float8, 0))::int,
                                                  round(t.position)::int)) AS watched
               FROM target t WHERE $3::float8 <= t.duration_secs + 1),
              up AS (
             INSERT INTO video_progress AS vp (user_id, media_id, enrollment_id, covered, last_position, watch_time, completed_at)
             SELECT $1::uuid, $2::uuid, sp.enrollment_id, sp.watched, sp.position, $4::float8,
                    CASE WHEN covered_secs(sp.watched) >= $5::float8 * sp.duration_secs THEN now() END
               FROM span sp
             ON CONFLICT (user_id, media_id) DO UPDATE SET
                    covered = vp.covered + excluded.covered,
                    last_position = excluded.last_position,
                    watch_time = vp.watch_time + excluded.watch_time,
                    last_heartbeat_at = now(),
                    completed_at = coalesce(vp.completed_at,
                        CASE WHEN covered_secs(vp.covered + excluded.covered)
                                  >= $5::float8 * (SELECT duration_secs FROM target) THEN now() END)
              WHERE covered_secs(vp.covered + excluded.covered)
                    <= $6::float8 * extract(epoch FROM now() - vp.first_watched_at) + $7::float8
                AND covered_secs(vp.covered + excluded.covered) - covered_secs(vp.covered)
                    <= $6::float8 * greatest(extract(epoch FROM now() - vp.last_heartbeat_at), 0) + $8::float8
             RETURNING covered_secs(covered) AS covered, last_position, completed_at,
                       coalesce(completed_at = now(), false) AS just_completed)
         SELECT t.duration_secs AS "duration_secs!", t.course_id AS "course_id!",
                t.enrollment_id AS "enrollment_id!", t.course_progress AS "course_progress!",
                t.enrollment_status AS "enrollment_status!", up.covered AS "covered?",
                up.last_position AS "last_position?", up.completed_at AS "completed_at?",
                up.just_completed AS "just_completed?"
           FROM target t LEFT JOIN up ON true"#,
        user_id,
        media_id,
        hb.last_position,
        hb.watch_time,
        COMPLETION_SHARE,
        MAX_PLAYBACK_RATE,
        SLACK_SECS,
        HEARTBEAT_SLACK_SECS,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let target = beat.ok_or(Error::NotFound("video"))?;
    let duration = target.duration_secs;
    if hb.last_position > duration + 1.0 {
        return Err(past_the_end(duration));
    }
    let (Some(covered), Some(last_position), Some(just_completed)) =
        (target.covered, target.last_position, target.just_completed)
    else {
        return Err(Error::invalid(
            "watch_time",
            "is more than could have been watched (at up to 2x speed) in the time since the previous heartbeat",
        ));
    };
    let mut jobs: Vec<NewJob> = Vec::new();
    let (course_progress, course_completed) = if just_completed {
        let (progress, completed_now, completed) =
            refresh_enrollment(&mut tx, target.enrollment_id).await?;
        if completed_now {
            jobs.push(
                certificates::queue_issue(&mut tx, target.enrollment_id, Some(user_id)).await?,
            );
            jobs.push(stats::queue_recompute(&mut tx, target.course_id, Some(user_id)).await?);
        }
        (progress, completed)
    } else if target.completed_at.is_some() && target.enrollment_status != "completed" {
        // As on the fast path: the snapshot's enrollment may predate a completion waited on.
        reread_enrollment(&mut *tx, target.enrollment_id).await?
    } else {
        (
            target.course_progress,
            target.enrollment_status == "completed",
        )
    };
    tx.commit().await?;
    for job in &jobs {
        services.jobs.dispatch(job).await;
    }
    Ok(VideoProgressView {
        media_id,
        last_position,
        watched_secs: covered,
        duration_secs: duration,
        completed: target.completed_at.is_some(),
        completed_at: target.completed_at,
        course_progress,
        course_completed,
    })
}

/// Recomputes an enrollment's progress from its completed videos and completes it at 100 %,
/// once: the enrollment row is locked first, so the count that follows sees every committed
/// completion, and only the transaction that moves `active` to `completed` reports it.
/// Returns (progress, completed by this call, completed).
pub(crate) async fn refresh_enrollment(
    conn: &mut sqlx::PgConnection,
    enrollment_id: Uuid,
) -> Result<(f64, bool, bool)> {
    sqlx::query!(
        "SELECT 1 AS locked FROM enrollments WHERE id = $1 FOR UPDATE",
        enrollment_id
    )
    .fetch_optional(&mut *conn)
    .await?;
    let row = sqlx::query!(
        r#"WITH p AS (
             SELECT CASE WHEN count(*) = 0 THEN 0
                         ELSE round(100.0 * count(vp.completed_at) / count(*), 2) END AS pct
               FROM enrollments e
               JOIN media m ON m.course_id = e.course_id AND m.kind = 'video' AND m.state = 'ready'
                           AND m.deleted_at IS NULL
               JOIN sections s ON s.id = m.section_id AND s.deleted_at IS NULL
               LEFT JOIN video_progress vp ON vp.media_id = m.id AND vp.user_id = e.user_id
              WHERE e.id = $1)
         UPDATE enrollments e SET
                progress = p.pct,
                status = CASE WHEN p.pct >= 100 AND e.status = 'active' THEN 'completed' ELSE e.status END,
                completed_at = CASE WHEN p.pct >= 100 AND e.status = 'active' THEN now() ELSE e.completed_at END,
                last_accessed_at = now()
           FROM p
          WHERE e.id = $1
         RETURNING e.progress::float8 AS "progress!",
                   (e.status = 'completed' AND e.completed_at = now()) AS "completed_now!",
                   e.status"#,
        enrollment_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((row.progress, row.completed_now, row.status == "completed"))
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct VideoProgressItem {
    pub media_id: Uuid,
    pub section_id: Uuid,
    pub title: String,
    pub duration_secs: f64,
    pub watched_secs: i32,
    pub last_position: f64,
    pub completed: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CourseProgress {
    pub enrollment: super::EnrollmentView,
    /// The course's certificate once issued (the same as `enrollment.certificate`).
    pub certificate: Option<certificates::CertificateRef>,
    pub videos: Vec<VideoProgressItem>,
}

/// The caller's progress in a course: the enrollment and every published video, in outline order.
pub async fn course_progress(
    services: &Services,
    caller: &Principal,
    course: &str,
) -> Result<CourseProgress> {
    let user = caller.require_user()?;
    let enrollment = super::view_by_course(services, user.id, course)
        .await?
        .ok_or(Error::NotFound("enrollment"))?;
    let videos = sqlx::query_as!(
        VideoProgressItem,
        r#"SELECT m.id AS "media_id!", s.id AS "section_id!", m.title AS "title!",
                m.duration_secs AS "duration_secs!",
                coalesce(covered_secs(vp.covered), 0) AS "watched_secs!",
                coalesce(vp.last_position, 0) AS "last_position!",
                vp.completed_at IS NOT NULL AS "completed!"
           FROM media m
           JOIN sections s ON s.id = m.section_id AND s.deleted_at IS NULL
           LEFT JOIN video_progress vp ON vp.media_id = m.id AND vp.user_id = $2
          WHERE m.course_id = $1 AND m.kind = 'video' AND m.state = 'ready' AND m.deleted_at IS NULL
          ORDER BY s.position, m.created_at, m.id"#,
        enrollment.course_id,
        user.id,
    )
    .fetch_all(&services.db)
    .await?;
    Ok(CourseProgress {
        certificate: enrollment.certificate.clone(),
        enrollment,
        videos,
    })
}

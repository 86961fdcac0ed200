//! The course's denormalised counters, recomputed exactly from the source tables by a coalesced
//! job. Request handlers never increment them: they queue [`queue_recompute`] in their own
//! transaction, and a burst of triggers folds into one run.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::Services;
use crate::error::Result;
use crate::jobs::{
    self, IssueCertificate, Job, JobError, NewJob, RecomputeAllCourseStats, RecomputeCourseStats,
};

/// Queues a recompute of one course's counters (coalesced with any already waiting).
pub async fn queue_recompute(
    conn: &mut PgConnection,
    course_id: Uuid,
    actor: Option<Uuid>,
) -> Result<NewJob> {
    jobs::insert(
        conn,
        &Job::RecomputeCourseStats(RecomputeCourseStats { course_id }),
        actor,
        None,
    )
    .await
}

/// Recomputes one course in one transaction: first every enrollment's progress (completing those
/// that reach 100 %, with their certificates queued), then every counter from the tables, so the
/// completion count includes what this run completed. Idempotent.
pub async fn recompute(services: &Services, course_id: Uuid) -> Result<bool> {
    let mut tx = services.db.begin().await?;
    let certificates = refresh_progress(&mut tx, course_id).await?;
    let updated = sqlx::query(
        "UPDATE courses c SET
                enrollment_count = s.enrolled,
                completion_count = s.completed,
                rating_count = s.ratings,
                rating_average = s.average
           FROM (SELECT
                   (SELECT count(*) FROM enrollments e WHERE e.course_id = $1 AND e.status IN ('active', 'completed')) AS enrolled,
                   (SELECT count(*) FROM enrollments e WHERE e.course_id = $1 AND e.status = 'completed') AS completed,
                   (SELECT count(*) FROM reviews r WHERE r.course_id = $1 AND r.deleted_at IS NULL) AS ratings,
                   (SELECT coalesce(round(avg(r.rating), 2), 0) FROM reviews r WHERE r.course_id = $1 AND r.deleted_at IS NULL) AS average
                ) s
          WHERE c.id = $1",
    )
    .bind(course_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    services.jobs.dispatch_many(&certificates).await;
    Ok(updated.rows_affected() == 1)
}

/// `p`: the enrollments of course `$1` (only the ids in `$2`, unless it is null) with their
/// stored `status` and `progress`, and `pct`, their progress from the course's published videos
/// now.
macro_rules! course_progress_cte {
    () => {
        "WITH videos AS (
             SELECT m.id FROM media m JOIN sections s ON s.id = m.section_id AND s.deleted_at IS NULL
              WHERE m.course_id = $1 AND m.kind = 'video' AND m.state = 'ready' AND m.deleted_at IS NULL),
              n AS (SELECT count(*) AS total FROM videos),
              p AS (
             SELECT e.id, e.status, e.progress,
                    CASE WHEN n.total = 0 THEN 0
                         ELSE round(100.0 * count(vp.media_id) / n.total, 2) END AS pct
               FROM enrollments e CROSS JOIN n
               LEFT JOIN video_progress vp ON vp.user_id = e.user_id AND vp.completed_at IS NOT NULL
                                          AND vp.media_id IN (SELECT id FROM videos)
              WHERE e.course_id = $1 AND ($2::uuid[] IS NULL OR e.id = ANY($2))
              GROUP BY e.id, n.total) "
    };
}

/// Recomputes every enrollment's progress in a course, after its published videos changed (an
/// instructor added or removed one, or deleted a section). An active enrollment that reaches
/// 100 % becomes completed, once, and its certificate job is queued in the caller's transaction
/// (returned, to dispatch after commit); completed enrollments stay completed.
///
/// A first read finds the enrollments that would change, without locking anything (usually
/// none). Those are then locked, in id order, and recomputed by a new statement, which sees
/// every heartbeat committed before the locks were granted; a heartbeat that completes a video
/// meanwhile waits for this transaction and recounts after it (it locks the enrollment too).
pub async fn refresh_progress(conn: &mut PgConnection, course_id: Uuid) -> Result<Vec<NewJob>> {
    let stale: Vec<Uuid> = sqlx::query_scalar(concat!(
        course_progress_cte!(),
        "SELECT id FROM p WHERE progress <> pct OR (pct >= 100 AND status = 'active') ORDER BY id"
    ))
    .bind(course_id)
    .bind(None::<Vec<Uuid>>)
    .fetch_all(&mut *conn)
    .await?;
    if stale.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query("SELECT 1 FROM enrollments WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&stale)
        .execute(&mut *conn)
        .await?;
    let updated: Vec<(Uuid, bool)> = sqlx::query_as(concat!(
        course_progress_cte!(),
        "UPDATE enrollments e SET
                progress = p.pct,
                status = CASE WHEN p.pct >= 100 AND p.status = 'active' THEN 'completed' ELSE e.status END,
                completed_at = CASE WHEN p.pct >= 100 AND p.status = 'active' THEN now() ELSE e.completed_at END
           FROM p
          WHERE e.id = p.id AND (p.progress <> p.pct OR (p.pct >= 100 AND p.status = 'active'))
         RETURNING e.id, (p.pct >= 100 AND p.status = 'active') AS completed_now"
    ))
    .bind(course_id)
    .bind(&stale)
    .fetch_all(&mut *conn)
    .await?;
    let completed: Vec<Job> = updated
        .iter()
        .filter(|(_, completed_now)| *completed_now)
        .map(|(enrollment_id, _)| {
            Job::IssueCertificate(IssueCertificate {
                enrollment_id: *enrollment_id,
            })
        })
        .collect();
    tracing::info!(
        %course_id,
        refreshed = updated.len(),
        completed = completed.len(),
        "course progress recomputed"
    );
    if completed.is_empty() {
        return Ok(Vec::new());
    }
    jobs::insert_many(conn, &completed, None).await
}

/// Recomputes every course's counters (the nightly repair of any drift), in one statement.
pub async fn recompute_all(services: &Services) -> Result<u64> {
    let updated = sqlx::query(
        "UPDATE courses c SET
                enrollment_count = coalesce(e.enrolled, 0),
                completion_count = coalesce(e.completed, 0),
                rating_count = coalesce(r.ratings, 0),
                rating_average = coalesce(r.average, 0)
           FROM courses c2
           LEFT JOIN (SELECT course_id,
                             count(*) FILTER (WHERE status IN ('active', 'completed')) AS enrolled,
                             count(*) FILTER (WHERE status = 'completed') AS completed
                        FROM enrollments GROUP BY course_id) e ON e.course_id = c2.id
           LEFT JOIN (SELECT course_id, count(*) AS ratings, round(avg(rating), 2) AS average
                        FROM reviews WHERE deleted_at IS NULL GROUP BY course_id) r ON r.course_id = c2.id
          WHERE c.id = c2.id
            AND (c.enrollment_count, c.completion_count, c.rating_count, c.rating_average)
                IS DISTINCT FROM (coalesce(e.enrolled, 0), coalesce(e.completed, 0), coalesce(r.ratings, 0), coalesce(r.average, 0))",
    )
    .execute(&services.db)
    .await?;
    Ok(updated.rows_affected())
}

/// The job handler. A course that no longer exists has nothing to recompute.
pub async fn run(services: &Services, job: &RecomputeCourseStats) -> Result<(), JobError> {
    recompute(services, job.course_id)
        .await
        .map(|_| ())
        .map_err(JobError::from)
}

/// The nightly repair job.
pub async fn run_all(services: &Services) -> Result<(), JobError> {
    let repaired = recompute_all(services).await.map_err(JobError::from)?;
    tracing::info!(repaired, "nightly recompute of course counters");
    Ok(())
}

/// Queues the nightly recompute (03:00 UTC) when it is due, once across the fleet.
pub async fn schedule_nightly(services: &Services) -> Result<bool> {
    jobs::queue_when_due(
        services,
        "UPDATE schedules
            SET next_run_at = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day 3 hours'
          WHERE name = 'recompute_all_course_stats' AND next_run_at <= now()
          RETURNING name",
        &Job::RecomputeAllCourseStats(RecomputeAllCourseStats {}),
    )
    .await
}

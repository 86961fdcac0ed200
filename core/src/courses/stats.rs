//! The course's denormalised counters, recomputed exactly from the source tables by a coalesced
//! job. Request handlers never increment them: they queue [`queue_recompute`] in their own
//! transaction, and a burst of triggers folds into one run.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::Services;
use crate::error::Result;
use crate::jobs::{self, Job, JobError, NewJob, RecomputeCourseStats};

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

/// Recomputes every counter of one course in a single statement. Idempotent.
pub async fn recompute(services: &Services, course_id: Uuid) -> Result<bool> {
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
    .execute(&services.db)
    .await?;
    refresh_progress(services, course_id).await?;
    Ok(updated.rows_affected() == 1)
}

/// Recomputes every enrollment's progress in a course, after its published videos changed (an
/// instructor added or removed one). Completed enrollments stay completed.
pub async fn refresh_progress(services: &Services, course_id: Uuid) -> Result<u64> {
    let updated = sqlx::query(
        "WITH videos AS (
             SELECT m.id FROM media m JOIN sections s ON s.id = m.section_id AND s.deleted_at IS NULL
              WHERE m.course_id = $1 AND m.kind = 'video' AND m.state = 'ready' AND m.deleted_at IS NULL),
              p AS (
             SELECT e.id,
                    CASE WHEN (SELECT count(*) FROM videos) = 0 THEN 0
                         ELSE round(100.0 * count(vp.media_id) / (SELECT count(*) FROM videos), 2) END AS pct
               FROM enrollments e
               LEFT JOIN video_progress vp ON vp.user_id = e.user_id AND vp.completed_at IS NOT NULL
                                          AND vp.media_id IN (SELECT id FROM videos)
              WHERE e.course_id = $1
              GROUP BY e.id)
         UPDATE enrollments e SET progress = p.pct FROM p WHERE e.id = p.id AND e.progress <> p.pct",
    )
    .bind(course_id)
    .execute(&services.db)
    .await?;
    Ok(updated.rows_affected())
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

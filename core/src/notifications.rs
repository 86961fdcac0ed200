//! In-app notifications and the fan-out of one event to many users (an instructor's followers
//! when a course is published).

use uuid::Uuid;

use crate::Services;
use crate::error::Result;
use crate::jobs::{self, FanOutEvent, FanOutNotifications, Job, JobError, SendEmail};
use crate::mail::EmailTemplate;

/// Followers handled per transaction.
pub const FAN_OUT_BATCH: i64 = 1000;

#[derive(sqlx::FromRow)]
struct Announced {
    title: String,
    slug: String,
    instructor_id: Uuid,
    instructor_name: String,
}

#[derive(sqlx::FromRow)]
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
    sqlx::query(
        "INSERT INTO notifications (id, user_id, type, title, message, data, event_key)
         SELECT gen_random_uuid(), c.instructor_id, 'new_enrollment', 'New student in ' || c.title,
                s.full_name || ' enrolled in ' || c.title,
                jsonb_build_object('course_id', c.id, 'enrollment_id', e.id, 'student_id', s.id),
                'enrolled:' || $2::text
           FROM enrollments e
           JOIN courses c ON c.id = e.course_id
           JOIN users s ON s.id = e.user_id
           JOIN users i ON i.id = c.instructor_id
          WHERE e.id = $1 AND i.notify_in_app AND i.status = 'active'
         ON CONFLICT (user_id, event_key) WHERE event_key IS NOT NULL DO NOTHING",
    )
    .bind(enrollment_id)
    .bind(event_id)
    .execute(&services.db)
    .await?;
    Ok(())
}

async fn course_published(
    services: &Services,
    course_id: Uuid,
    start_after: Option<Uuid>,
) -> Result<()> {
    let course: Option<Announced> = sqlx::query_as(
        "SELECT c.title, c.slug, c.instructor_id, u.full_name AS instructor_name
           FROM courses c JOIN users u ON u.id = c.instructor_id
          WHERE c.id = $1 AND c.status = 'published' AND c.deleted_at IS NULL",
    )
    .bind(course_id)
    .fetch_optional(&services.db)
    .await?;
    // Unpublished or deleted since: there is nothing to announce any more.
    let Some(course) = course else { return Ok(()) };
    let event_key = format!("course_published:{course_id}");
    let base = services.config.public_url.as_str().trim_end_matches('/');
    let link = format!("{base}/courses/{}", course.slug);
    let title = format!("New course by {}", course.instructor_name);
    let message = format!("{} is now available", course.title);
    let data = serde_json::json!({ "course_id": course_id, "slug": course.slug });
    loop {
        let mut tx = services.db.begin().await?;
        sqlx::query("INSERT INTO fanout_cursors (event_key, after_user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(&event_key)
            .bind(start_after)
            .execute(&mut *tx)
            .await?;
        let (after, finished): (Option<Uuid>, bool) = sqlx::query_as(
            "SELECT after_user_id, finished_at IS NOT NULL FROM fanout_cursors WHERE event_key = $1 FOR UPDATE",
        )
        .bind(&event_key)
        .fetch_one(&mut *tx)
        .await?;
        if finished {
            return Ok(());
        }
        let batch: Vec<Recipient> = sqlx::query_as(
            "SELECT u.id, u.email, u.full_name, u.notify_email, u.notify_in_app
               FROM follows f JOIN users u ON u.id = f.follower_id
              WHERE f.instructor_id = $1 AND ($2::uuid IS NULL OR f.follower_id > $2) AND u.status = 'active'
              ORDER BY f.follower_id LIMIT $3",
        )
        .bind(course.instructor_id)
        .bind(after)
        .bind(FAN_OUT_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = batch.last().map(|r| r.id) else {
            sqlx::query("UPDATE fanout_cursors SET finished_at = now(), updated_at = now() WHERE event_key = $1")
                .bind(&event_key)
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
        sqlx::query(
            "INSERT INTO notifications (id, user_id, type, title, message, data, event_key)
             SELECT gen_random_uuid(), u, 'course_published', $2, $3, $4, $5 FROM unnest($1::uuid[]) AS u
             ON CONFLICT (user_id, event_key) WHERE event_key IS NOT NULL DO NOTHING",
        )
        .bind(&in_app)
        .bind(&title)
        .bind(&message)
        .bind(&data)
        .bind(&event_key)
        .execute(&mut *tx)
        .await?;
        let mut mails = Vec::new();
        for r in batch.iter().filter(|r| r.notify_email) {
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
            mails.push(jobs::insert(&mut tx, &job, None, None).await?);
        }
        sqlx::query(
            "UPDATE fanout_cursors SET after_user_id = $2, delivered = delivered + $3, updated_at = now()
              WHERE event_key = $1",
        )
        .bind(&event_key)
        .bind(last)
        .bind(batch.len() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for mail in &mails {
            services.jobs.dispatch(mail).await;
        }
        if (batch.len() as i64) < FAN_OUT_BATCH {
            sqlx::query("UPDATE fanout_cursors SET finished_at = now() WHERE event_key = $1")
                .bind(&event_key)
                .execute(&services.db)
                .await?;
            return Ok(());
        }
    }
}

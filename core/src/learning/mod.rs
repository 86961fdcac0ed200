//! Learning: enrollments (enroll, re-enroll after a drop, drop) and the caller's list of them.
//!
//! Enrolling is idempotent: a retry or a double click gives one enrollment (the unique
//! `(user_id, course_id)` row), and a dropped enrollment comes back with its progress. The
//! course's counters change only through the coalesced statistics job.

pub mod certificates;
pub mod entitlements;
pub mod progress;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::Services;
use crate::auth::Principal;
use crate::courses::{self, stats};
use crate::error::{Error, Result};
use crate::jobs::{self, FanOutEvent, FanOutNotifications, Job, NewJob, SendEmail};
use crate::mail::EmailTemplate;
use crate::page::{self, Page};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EnrollmentView {
    pub id: Uuid,
    pub course_id: Uuid,
    pub course_slug: String,
    pub course_title: String,
    /// `active`, `dropped` or `completed`.
    pub status: String,
    /// What the student paid, as an exact decimal string.
    pub price_paid: String,
    pub currency: String,
    /// 0 to 100.
    pub progress: f64,
    pub enrolled_at: DateTime<Utc>,
    pub dropped_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The certificate of the completed course, once issued; `null` before.
    pub certificate: Option<certificates::CertificateRef>,
    #[serde(skip)]
    issued: certificates::IssuedColumns,
}

impl EnrollmentView {
    /// Fills in `certificate` from the joined certificate columns.
    async fn with_certificate(mut self, services: &Services) -> Result<Self> {
        self.certificate = self.issued.reference(services).await?;
        Ok(self)
    }
}

/// Which of a user's enrollments to read.
enum Which<'a> {
    /// The one in a course, by id.
    Course(Uuid),
    /// The one in a course, by slug.
    Slug(&'a str),
    /// A page of all of them, newest first, after a cursor.
    Page {
        before: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    },
}

/// Reads enrollments of `user_id` as the API shows them, with their issued certificate's
/// columns (the certificate's links are filled in by [`EnrollmentView::with_certificate`]).
async fn fetch_views(
    db: &sqlx::PgPool,
    user_id: Uuid,
    which: Which<'_>,
) -> Result<Vec<EnrollmentView>> {
    let (course_id, slug, before, limit) = match which {
        Which::Course(id) => (Some(id), None, None, 1),
        Which::Slug(slug) => (None, Some(slug), None, 1),
        Which::Page { before, limit } => (None, None, before, limit),
    };
    let rows = sqlx::query!(
        r#"SELECT e.id AS "id!", e.course_id AS "course_id!", c.slug AS "course_slug!",
                  c.title AS "course_title!", e.status AS "status!",
                  e.price_paid::text AS "price_paid!", e.currency AS "currency!",
                  e.progress::float8 AS "progress!", e.enrolled_at AS "enrolled_at!",
                  e.dropped_at AS "dropped_at?", e.completed_at AS "completed_at?",
                  cert.id AS "certificate_id?", cert.verification_code AS "certificate_code?",
                  cert.pdf_key AS "certificate_pdf_key?"
             FROM enrollments e JOIN courses c ON c.id = e.course_id
             LEFT JOIN certificates cert ON cert.enrollment_id = e.id AND cert.issued_at IS NOT NULL
                                        AND cert.pdf_key IS NOT NULL
            WHERE e.user_id = $1 AND ($2::uuid IS NULL OR e.course_id = $2)
              AND ($3::text IS NULL OR c.slug = $3)
              AND ($4::timestamptz IS NULL OR (e.enrolled_at, e.id) < ($4, $5::uuid))
            ORDER BY e.enrolled_at DESC, e.id DESC LIMIT $6"#,
        user_id,
        course_id,
        slug,
        before.map(|b| b.0),
        before.map(|b| b.1),
        limit,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| EnrollmentView {
            id: r.id,
            course_id: r.course_id,
            course_slug: r.course_slug,
            course_title: r.course_title,
            status: r.status,
            price_paid: r.price_paid,
            currency: r.currency,
            progress: r.progress,
            enrolled_at: r.enrolled_at,
            dropped_at: r.dropped_at,
            completed_at: r.completed_at,
            certificate: None,
            issued: certificates::IssuedColumns::new(
                r.certificate_id,
                r.certificate_code,
                r.certificate_pdf_key,
            ),
        })
        .collect())
}

/// What enrolling did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnrollOutcome {
    Created,
    Reactivated,
    AlreadyEnrolled,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Enrolled {
    pub enrollment: EnrollmentView,
    pub outcome: EnrollOutcome,
}

struct Offer {
    id: Uuid,
    title: String,
    slug: String,
    instructor_id: Uuid,
    instructor_name: String,
    price_cents: i64,
    currency: String,
}

/// Enrolls the caller in a published course. A paid course needs an entitlement (a grant or a
/// recorded payment: see `entitlements`), a verified email and an `Idempotency-Key`; the price is
/// recorded as paid. Re-enrolling after a drop checks the entitlement again. The key is stored,
/// and a retry with it replayed, by the API's idempotency layer (`crate::idempotency`) before
/// this runs; here it is only required.
pub async fn enroll(
    services: &Services,
    caller: &Principal,
    course: &str,
    idempotency_key: Option<&str>,
) -> Result<Enrolled> {
    let user = caller.require_user()?;
    let mut tx = services.db.begin().await?;
    let row = courses::load_visible(&mut tx, Some(caller), course).await?;
    let offer = sqlx::query_as!(
        Offer,
        r#"SELECT c.id, c.title, c.slug, c.instructor_id, u.full_name AS instructor_name,
                  (c.price * 100)::bigint AS "price_cents!", c.currency
             FROM courses c JOIN users u ON u.id = c.instructor_id WHERE c.id = $1"#,
        row.id,
    )
    .fetch_one(&mut *tx)
    .await?;
    let existing = sqlx::query!(
        "SELECT id, status FROM enrollments WHERE user_id = $1 AND course_id = $2 FOR UPDATE",
        user.id,
        offer.id,
    )
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| (r.id, r.status));
    let (id, outcome) = match existing {
        Some((id, status)) if status != "dropped" => (id, EnrollOutcome::AlreadyEnrolled),
        Some((id, _)) => {
            require_open(&row)?;
            // Dropping never refunds an entitlement check: a paid course needs one again.
            if offer.price_cents > 0 && !entitlements::holds(&mut tx, offer.id, user.id).await? {
                return Err(entitlements::payment_required());
            }
            sqlx::query!(
                "UPDATE enrollments SET status = 'active', dropped_at = NULL, enrolled_at = now() WHERE id = $1",
                id,
            )
            .execute(&mut *tx)
            .await?;
            (id, EnrollOutcome::Reactivated)
        }
        None => {
            require_open(&row)?;
            if offer.instructor_id == user.id {
                return Err(Error::Conflict {
                    code: "own_course",
                    message: "instructors cannot enroll in their own course".into(),
                });
            }
            if offer.price_cents > 0 {
                if !user.email_verified {
                    return Err(Error::Forbidden {
                        code: "email_unverified",
                        message: "verify your email address before enrolling in a paid course"
                            .into(),
                    });
                }
                if !entitlements::holds(&mut tx, offer.id, user.id).await? {
                    return Err(entitlements::payment_required());
                }
                match idempotency_key.map(str::trim) {
                    Some(k) if (1..=255).contains(&k.len()) => {}
                    _ => {
                        return Err(Error::invalid(
                            "Idempotency-Key",
                            "a paid enrollment needs an Idempotency-Key header (1 to 255 characters)",
                        ));
                    }
                }
            }
            let id = Uuid::now_v7();
            let inserted = sqlx::query!(
                "INSERT INTO enrollments (id, user_id, course_id, price_paid, currency)
                 VALUES ($1, $2, $3, $4::int8::numeric / 100, $5) ON CONFLICT (user_id, course_id) DO NOTHING",
                id,
                user.id,
                offer.id,
                offer.price_cents,
                offer.currency,
            )
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                // A concurrent request enrolled first: that enrollment is the answer.
                tx.rollback().await?;
                let enrollment = view_for(services, user.id, offer.id).await?;
                return Ok(Enrolled {
                    enrollment,
                    outcome: EnrollOutcome::AlreadyEnrolled,
                });
            }
            (id, EnrollOutcome::Created)
        }
    };
    let mut queued: Vec<NewJob> = Vec::new();
    if outcome != EnrollOutcome::AlreadyEnrolled {
        queued.push(stats::queue_recompute(&mut tx, offer.id, Some(user.id)).await?);
        if claim_notice(&mut tx, id, services.config.enrollment_notice_window).await? {
            let notify = Job::FanOutNotifications(FanOutNotifications {
                event: FanOutEvent::Enrolled {
                    enrollment_id: id,
                    event_id: Uuid::now_v7(),
                },
                after_user_id: None,
            });
            queued.push(jobs::insert(&mut tx, &notify, Some(user.id), None).await?);
        }
    }
    if outcome == EnrollOutcome::Created {
        let student = sqlx::query!("SELECT email, full_name FROM users WHERE id = $1", user.id)
            .fetch_one(&mut *tx)
            .await?;
        let email = student.email;
        let mut vars = serde_json::Map::new();
        vars.insert("full_name".into(), student.full_name.into());
        vars.insert("course_title".into(), offer.title.clone().into());
        vars.insert(
            "instructor_name".into(),
            offer.instructor_name.clone().into(),
        );
        vars.insert(
            "link".into(),
            crate::links::course(&services.config, &offer.slug).into(),
        );
        let mail = Job::SendEmail(SendEmail {
            to: email,
            template: EmailTemplate::EnrollmentWelcome,
            vars,
        });
        queued.push(jobs::insert(&mut tx, &mail, Some(user.id), None).await?);
    }
    tx.commit().await?;
    for job in &queued {
        services.jobs.dispatch(job).await;
    }
    Ok(Enrolled {
        enrollment: view_for(services, user.id, offer.id).await?,
        outcome,
    })
}

/// Whether the instructor should hear of this (re-)enrollment: not when they were told about it
/// within `window` (a student dropping and re-enrolling over and over). Stamps the enrollment
/// when it says yes; the caller holds the enrollment's row lock, so concurrent enrollments agree.
async fn claim_notice(
    conn: &mut sqlx::PgConnection,
    enrollment_id: Uuid,
    window: std::time::Duration,
) -> Result<bool> {
    let claimed = sqlx::query!(
        "UPDATE enrollments SET instructor_notified_at = now()
          WHERE id = $1
            AND (instructor_notified_at IS NULL
                 OR instructor_notified_at <= now() - make_interval(secs => $2::float8))",
        enrollment_id,
        window.as_secs_f64(),
    )
    .execute(conn)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// New enrollments need the course in the public catalogue (not only visible to its owner).
fn require_open(row: &courses::CourseRow) -> Result<()> {
    if row.is_public() {
        Ok(())
    } else {
        Err(Error::Conflict {
            code: "course_not_open",
            message: "this course is not open for enrollment".into(),
        })
    }
}

async fn view_for(services: &Services, user_id: Uuid, course_id: Uuid) -> Result<EnrollmentView> {
    let view = fetch_views(&services.db, user_id, Which::Course(course_id))
        .await?
        .pop()
        .ok_or(Error::NotFound("enrollment"))?;
    view.with_certificate(services).await
}

/// Drops the caller's enrollment; progress is kept for a later re-enrollment. Dropping twice is
/// harmless; a completed course cannot be dropped.
pub async fn drop_course(
    services: &Services,
    caller: &Principal,
    course: &str,
) -> Result<EnrollmentView> {
    let user = caller.require_user()?;
    let mut tx = services.db.begin().await?;
    // By id or by slug, each on its own index (as the course pages look courses up).
    let course_id: Option<Uuid> = match Uuid::parse_str(course) {
        Ok(id) => {
            sqlx::query_scalar!("SELECT id FROM courses WHERE id = $1", id)
                .fetch_optional(&mut *tx)
                .await?
        }
        Err(_) => {
            sqlx::query_scalar!("SELECT id FROM courses WHERE slug = $1", course)
                .fetch_optional(&mut *tx)
                .await?
        }
    };
    let course_id = course_id.ok_or(Error::NotFound("course"))?;
    let status = sqlx::query_scalar!(
        "SELECT status FROM enrollments WHERE user_id = $1 AND course_id = $2 FOR UPDATE",
        user.id,
        course_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    match status.as_deref() {
        None => return Err(Error::NotFound("enrollment")),
        Some("completed") => {
            return Err(Error::Conflict {
                code: "course_completed",
                message: "a completed course cannot be dropped".into(),
            });
        }
        Some("dropped") => tx.rollback().await?,
        Some(_) => {
            sqlx::query!(
                "UPDATE enrollments SET status = 'dropped', dropped_at = now() WHERE user_id = $1 AND course_id = $2",
                user.id,
                course_id,
            )
            .execute(&mut *tx)
            .await?;
            let job = stats::queue_recompute(&mut tx, course_id, Some(user.id)).await?;
            tx.commit().await?;
            services.jobs.dispatch(&job).await;
        }
    }
    view_for(services, user.id, course_id).await
}

/// The caller's enrollments, most recent first.
pub async fn mine(
    services: &Services,
    caller: &Principal,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<Page<EnrollmentView>> {
    let user = caller.require_user()?;
    let limit = page::limit(limit);
    let after: Option<(DateTime<Utc>, Uuid)> = cursor
        .map(|c| page::decode_cursor(&services.config.jwt_secret, c))
        .transpose()?;
    let items = fetch_views(
        &services.db,
        user.id,
        Which::Page {
            before: after,
            limit,
        },
    )
    .await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| {
            items
                .last()
                .map(|e| page::encode_cursor(&services.config.jwt_secret, &(e.enrolled_at, e.id)))
        })
        .flatten();
    let mut with_certificates = Vec::with_capacity(items.len());
    for item in items {
        with_certificates.push(item.with_certificate(services).await?);
    }
    Ok(Page {
        items: with_certificates,
        next_cursor,
    })
}

/// The caller's enrollment in a course (by id or slug), whatever its status.
pub(crate) async fn view_by_course(
    services: &Services,
    user_id: Uuid,
    course: &str,
) -> Result<Option<EnrollmentView>> {
    let which = match Uuid::parse_str(course) {
        Ok(id) => Which::Course(id),
        Err(_) => Which::Slug(course),
    };
    let view = fetch_views(&services.db, user_id, which).await?.pop();
    match view {
        Some(view) => Ok(Some(view.with_certificate(services).await?)),
        None => Ok(None),
    }
}

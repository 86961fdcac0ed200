//! Instructor dashboards. Each is a fixed handful of SQL statements whatever the number of
//! courses, videos or days: trends come from `generate_series` with empty days filled with zero,
//! distributions from `CASE` buckets, per-video figures from one grouped join. Days are counted
//! in the instructor's time zone; revenue is what students paid at enrollment, per currency.

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Services;
use crate::auth::Principal;
use crate::error::{Error, FieldErrors, Result};

/// The longest range a dashboard covers.
pub const MAX_RANGE_DAYS: i64 = 731;

/// Dates outside these years are refused: chrono parses years PostgreSQL cannot store (or that
/// overflow the range arithmetic), and nothing on the platform predates 1970.
const MIN_YEAR: i32 = 1970;
const MAX_YEAR: i32 = 9999;

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeParams {
    /// First day (YYYY-MM-DD), default 29 days before `to`.
    pub from: Option<String>,
    /// Last day, included (YYYY-MM-DD), default today in `tz`.
    pub to: Option<String>,
    /// IANA time zone the days are counted in, default UTC.
    pub tz: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Range {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub tz: String,
}

async fn range(conn: &mut PgConnection, p: &RangeParams) -> Result<Range> {
    let mut fields = FieldErrors::new();
    let tz = p.tz.clone().unwrap_or_else(|| "UTC".into());
    let known = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1) AS "known!""#,
        tz,
    )
    .fetch_one(&mut *conn)
    .await?;
    if !known {
        fields.add("tz", format!("{tz:?} is not an IANA time zone"));
    }
    let parse = |name: &str, v: &Option<String>, fields: &mut FieldErrors| {
        v.as_deref().and_then(|s| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .filter(|d| (MIN_YEAR..=MAX_YEAR).contains(&d.year()))
                .ok_or_else(|| {
                    fields.add(
                        name,
                        format!(
                            "must be a date like 2026-11-25, in the years {MIN_YEAR} to {MAX_YEAR}"
                        ),
                    )
                })
                .ok()
        })
    };
    let from = parse("from", &p.from, &mut fields);
    let to = parse("to", &p.to, &mut fields);
    fields.into_result()?;
    let today = sqlx::query_scalar!(
        r#"SELECT (now() AT TIME ZONE $1::text)::date AS "today!""#,
        tz
    )
    .fetch_one(&mut *conn)
    .await?;
    let to = to.unwrap_or(today);
    let from = from.unwrap_or(to - chrono::Duration::days(29));
    if from > to {
        return Err(Error::invalid("from", "must not be after to"));
    }
    if (to - from).num_days() >= MAX_RANGE_DAYS {
        return Err(Error::invalid(
            "to",
            format!("the range must be at most {MAX_RANGE_DAYS} days"),
        ));
    }
    Ok(Range { from, to, tz })
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Money {
    pub currency: String,
    /// Exact decimal, as a string.
    pub amount: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CourseSummary {
    pub id: Uuid,
    pub title: String,
    pub status: String,
    pub enrollments: i64,
    pub completions: i64,
    /// Completions over enrollments, 0 to 100.
    pub completion_rate: f64,
    pub rating_average: f64,
    pub rating_count: i32,
    pub enrollments_in_range: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Overview {
    pub range: Range,
    pub courses_total: i64,
    pub courses_published: i64,
    pub enrollments_total: i64,
    pub completions_total: i64,
    pub enrollments_in_range: i64,
    /// Average rating over every review of the instructor's courses.
    pub rating_average: f64,
    pub revenue: Vec<Money>,
    pub revenue_in_range: Vec<Money>,
    pub courses: Vec<CourseSummary>,
}

fn require_instructor(caller: &Principal) -> Result<Uuid> {
    let user = caller.require_user()?;
    if matches!(
        user.role,
        crate::auth::Role::Instructor | crate::auth::Role::Admin
    ) {
        Ok(user.id)
    } else {
        Err(Error::Forbidden {
            code: "instructor_required",
            message: "dashboards are for instructors".into(),
        })
    }
}

/// The instructor's overview: one statement whatever the number of courses (plus the range's
/// two). All-time figures come from `enrollment_totals`; only the range's enrollments are read.
pub async fn overview(
    services: &Services,
    caller: &Principal,
    params: &RangeParams,
) -> Result<Overview> {
    let instructor = require_instructor(caller)?;
    let mut conn = services.db.acquire().await?;
    let range = range(&mut conn, params).await?;
    // One statement: all-time figures from `enrollment_totals` (kept by triggers), the range's
    // enrollments read once (an index-only range scan per course) for both the per-course counts
    // and the revenue, and the average over every review.
    #[derive(Deserialize)]
    struct Revenue {
        currency: String,
        total: String,
        in_range: String,
    }
    let row = sqlx::query!(
        r#"WITH mine AS MATERIALIZED (
                 SELECT id, title, status, rating_average, rating_count, created_at, deleted_at
                   FROM courses WHERE instructor_id = $1),
              ranged AS MATERIALIZED (
                 SELECT e.course_id, e.currency, count(*) AS n, sum(e.price_paid) AS paid
                   FROM mine JOIN enrollments e ON e.course_id = mine.id
                  WHERE e.enrolled_at >= ($3::date)::timestamp AT TIME ZONE $2::text
                    AND e.enrolled_at < ($4::date + 1)::timestamp AT TIME ZONE $2::text
                  GROUP BY e.course_id, e.currency),
              totals AS MATERIALIZED (
                 SELECT t.course_id, t.currency, t.enrolled, t.completed, t.revenue
                   FROM mine JOIN enrollment_totals t ON t.course_id = mine.id)
         SELECT coalesce((
                  SELECT json_agg(s ORDER BY s.created_at DESC) FROM (
                    SELECT m.id, m.title, m.status, coalesce(t.enrolled, 0) AS enrollments,
                           coalesce(t.completed, 0) AS completions,
                           CASE WHEN coalesce(t.enrolled, 0) = 0 THEN 0
                                ELSE round(100.0 * t.completed / t.enrolled, 2)::float8 END AS completion_rate,
                           m.rating_average::float8 AS rating_average, m.rating_count,
                           coalesce(r.n, 0) AS enrollments_in_range, m.created_at
                      FROM mine m
                      LEFT JOIN (SELECT course_id, sum(enrolled)::bigint AS enrolled, sum(completed)::bigint AS completed
                                   FROM totals GROUP BY course_id) t ON t.course_id = m.id
                      LEFT JOIN (SELECT course_id, sum(n)::bigint AS n FROM ranged GROUP BY course_id) r
                             ON r.course_id = m.id
                     WHERE m.deleted_at IS NULL) s), '[]') AS "courses!",
                coalesce((
                  SELECT json_agg(x ORDER BY x.currency) FROM (
                    SELECT t.currency, sum(t.revenue)::text AS total,
                           coalesce((SELECT sum(paid) FROM ranged WHERE ranged.currency = t.currency), 0)::text AS in_range
                      FROM totals t GROUP BY t.currency HAVING sum(t.revenue) > 0) x), '[]') AS "revenue!",
                (SELECT coalesce(round(avg(r.rating), 2), 0)::float8
                   FROM reviews r JOIN mine c ON c.id = r.course_id
                  WHERE r.deleted_at IS NULL AND c.deleted_at IS NULL) AS "rating_average!""#,
        instructor,
        range.tz,
        range.from,
        range.to,
    )
    .fetch_one(&mut *conn)
    .await?;
    let courses: Vec<CourseSummary> = serde_json::from_value(row.courses)
        .map_err(|e| Error::Internal(format!("overview courses: {e}").into()))?;
    let revenue: Vec<Revenue> = serde_json::from_value(row.revenue)
        .map_err(|e| Error::Internal(format!("overview revenue: {e}").into()))?;
    let rating_average = row.rating_average;
    Ok(Overview {
        courses_total: courses.len() as i64,
        courses_published: courses.iter().filter(|c| c.status == "published").count() as i64,
        enrollments_total: courses.iter().map(|c| c.enrollments).sum(),
        completions_total: courses.iter().map(|c| c.completions).sum(),
        enrollments_in_range: courses.iter().map(|c| c.enrollments_in_range).sum(),
        rating_average,
        revenue: revenue
            .iter()
            .map(|r| Money {
                currency: r.currency.clone(),
                amount: r.total.clone(),
            })
            .collect(),
        revenue_in_range: revenue
            .into_iter()
            .map(|r| Money {
                currency: r.currency,
                amount: r.in_range,
            })
            .collect(),
        courses,
        range,
    })
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DayCount {
    pub day: NaiveDate,
    pub enrollments: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Bucket {
    /// `0-24`, `25-49`, `50-74`, `75-99`, `100`.
    pub bucket: String,
    pub students: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct VideoStats {
    pub media_id: Uuid,
    pub title: String,
    pub viewers: i64,
    pub completions: i64,
    /// Average share of the video watched by its viewers, 0 to 100.
    pub average_watched: f64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StarCount {
    pub stars: i32,
    pub reviews: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CourseAnalytics {
    pub course_id: Uuid,
    pub range: Range,
    pub enrollments: i64,
    pub completions: i64,
    pub completion_rate: f64,
    pub average_progress: f64,
    pub enrollment_trend: Vec<DayCount>,
    pub progress_distribution: Vec<Bucket>,
    pub top_videos: Vec<VideoStats>,
    pub revenue: Vec<Money>,
    pub rating_distribution: Vec<StarCount>,
}

/// One course's dashboard: six statements whatever the number of days, videos or students.
/// Another instructor's course is 404.
pub async fn course(
    services: &Services,
    caller: &Principal,
    course_id: Uuid,
    params: &RangeParams,
) -> Result<CourseAnalytics> {
    let instructor = require_instructor(caller)?;
    let mut conn = services.db.acquire().await?;
    let owner = sqlx::query_scalar!(
        "SELECT instructor_id FROM courses WHERE id = $1 AND deleted_at IS NULL",
        course_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    match owner {
        Some(owner) if owner == instructor || caller.is_admin() => {}
        _ => return Err(Error::NotFound("course")),
    }
    let range = range(&mut conn, params).await?;
    let totals = sqlx::query!(
        r#"SELECT count(*) AS "enrollments!", count(*) FILTER (WHERE status = 'completed') AS "completions!",
                  coalesce(round(avg(progress), 2), 0)::float8 AS "average_progress!"
             FROM enrollments WHERE course_id = $1 AND status IN ('active', 'completed')"#,
        course_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    let (enrollments, completions, average_progress) = (
        totals.enrollments,
        totals.completions,
        totals.average_progress,
    );
    let enrollment_trend = sqlx::query_as!(
        DayCount,
        r#"SELECT d::date AS "day!", coalesce(x.n, 0) AS "enrollments!"
             FROM generate_series($2::date, $3::date, interval '1 day') AS d
             LEFT JOIN (SELECT (enrolled_at AT TIME ZONE $4::text)::date AS day, count(*) AS n
                          FROM enrollments
                         WHERE course_id = $1
                           AND enrolled_at >= ($2::date)::timestamp AT TIME ZONE $4::text
                           AND enrolled_at < ($3::date + 1)::timestamp AT TIME ZONE $4::text
                         GROUP BY 1) x ON x.day = d::date
            ORDER BY d"#,
        course_id,
        range.from,
        range.to,
        range.tz,
    )
    .fetch_all(&mut *conn)
    .await?;
    let progress_distribution = sqlx::query_as!(
        Bucket,
        r#"SELECT b.bucket AS "bucket!", count(e.id) AS "students!"
           FROM (VALUES (1, '0-24'), (2, '25-49'), (3, '50-74'), (4, '75-99'), (5, '100')) AS b(n, bucket)
           LEFT JOIN enrollments e ON e.course_id = $1 AND e.status IN ('active', 'completed')
                AND b.n = CASE WHEN e.progress >= 100 THEN 5 ELSE width_bucket(e.progress, 0, 100, 4) END
          GROUP BY b.n, b.bucket ORDER BY b.n"#,
        course_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let top_videos = sqlx::query_as!(
        VideoStats,
        r#"SELECT m.id AS media_id, m.title, count(vp.media_id) AS "viewers!",
                count(vp.completed_at) AS "completions!",
                coalesce(round(avg(least(100.0, 100.0 * vp.watched_secs / m.duration_secs))::numeric, 2), 0)::float8
                    AS "average_watched!"
           FROM media m
           JOIN sections s ON s.id = m.section_id AND s.deleted_at IS NULL
           LEFT JOIN video_progress vp ON vp.media_id = m.id
          WHERE m.course_id = $1 AND m.kind = 'video' AND m.state = 'ready' AND m.deleted_at IS NULL
          GROUP BY m.id
          ORDER BY 3 DESC, 4 DESC, m.id
          LIMIT 20"#,
        course_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let revenue = sqlx::query_as!(
        Money,
        r#"SELECT currency, revenue::text AS "amount!" FROM enrollment_totals
            WHERE course_id = $1 AND revenue > 0 ORDER BY currency"#,
        course_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let rating_distribution = sqlx::query_as!(
        StarCount,
        r#"SELECT s AS "stars!", count(r.id) AS "reviews!"
             FROM generate_series(1, 5) AS s
             LEFT JOIN reviews r ON r.course_id = $1 AND r.rating = s AND r.deleted_at IS NULL
            GROUP BY s ORDER BY s"#,
        course_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(CourseAnalytics {
        course_id,
        range,
        enrollments,
        completions,
        completion_rate: if enrollments == 0 {
            0.0
        } else {
            (10000.0 * completions as f64 / enrollments as f64).round() / 100.0
        },
        average_progress,
        enrollment_trend,
        progress_distribution,
        top_videos,
        revenue,
        rating_distribution,
    })
}

//! Certificates of completion: one per completed enrollment, rendered to PDF (student, course,
//! instructor, date, verification code and URL, and a QR code of that URL) by the
//! issue-certificate job, stored in S3, mailed once, and verifiable publicly.
//!
//! Re-issuing (after the student changes their name) re-renders the same certificate: the id and
//! the verification code never change.

use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Services;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::jobs::{self, IssueCertificate, Job, JobError, JobReference, NewJob, SendEmail};
use crate::mail::EmailTemplate;

/// How long the signed link to a certificate's PDF lives.
const PDF_LINK_TTL: Duration = Duration::from_secs(15 * 60);
/// DejaVu Sans, embedded in the binary so a deployed binary needs no system fonts (licence:
/// `core/assets/fonts/LICENSE`).
const FONT_REGULAR: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FONT_BOLD: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");

/// Queues the issue-certificate job for a completed enrollment, in the caller's transaction.
pub async fn queue_issue(
    conn: &mut PgConnection,
    enrollment_id: Uuid,
    actor: Option<Uuid>,
) -> Result<NewJob> {
    jobs::insert(
        conn,
        &Job::IssueCertificate(IssueCertificate { enrollment_id }),
        actor,
        None,
    )
    .await
}

struct Completed {
    status: String,
    completed_at: Option<DateTime<Utc>>,
    student_email: String,
    student_name: String,
    course_title: String,
    instructor_name: String,
}

/// What goes on the certificate.
#[derive(Debug, Clone)]
pub struct CertificateText {
    pub student_name: String,
    pub course_title: String,
    pub instructor_name: String,
    pub completed_on: String,
    pub verification_code: String,
    pub verify_url: String,
}

/// A verification code people can read out: 12 characters without look-alikes, in groups of 4.
fn new_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    let raw: String = (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{}-{}-{}", &raw[0..4], &raw[4..8], &raw[8..12])
}

fn verify_url(services: &Services, id: Uuid) -> String {
    crate::links::certificate(&services.config, id)
}

fn storage_error(e: crate::storage::StorageError) -> JobError {
    if e.is_transient() {
        JobError::Retryable(e.to_string())
    } else {
        JobError::Permanent(e.to_string())
    }
}

/// The job: record (or refresh) the certificate row, render the PDF, store it, and mail the
/// student the first time. Running it again re-renders the same certificate.
pub async fn run(services: &Services, job: &IssueCertificate) -> Result<(), JobError> {
    let row = sqlx::query_as!(
        Completed,
        "SELECT e.status, e.completed_at, s.email AS student_email, s.full_name AS student_name,
                c.title AS course_title, i.full_name AS instructor_name
           FROM enrollments e
           JOIN users s ON s.id = e.user_id
           JOIN courses c ON c.id = e.course_id
           JOIN users i ON i.id = c.instructor_id
          WHERE e.id = $1",
        job.enrollment_id,
    )
    .fetch_optional(&services.db)
    .await
    .map_err(|e| JobError::from(Error::from(e)))?;
    let Some(row) = row else {
        return Err(JobError::Permanent(
            "the enrollment no longer exists".into(),
        ));
    };
    let (Some(completed_at), "completed") = (row.completed_at, row.status.as_str()) else {
        return Err(JobError::Permanent(format!(
            "the enrollment is {}, not completed: no certificate",
            row.status
        )));
    };
    let stored = sqlx::query!(
        "INSERT INTO certificates (id, enrollment_id, verification_code, student_name, course_title,
                                   instructor_name, completed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (enrollment_id) DO UPDATE SET student_name = excluded.student_name,
                course_title = excluded.course_title, instructor_name = excluded.instructor_name
         RETURNING id, verification_code",
        Uuid::now_v7(),
        job.enrollment_id,
        new_code(),
        row.student_name,
        row.course_title,
        row.instructor_name,
        completed_at,
    )
    .fetch_one(&services.db)
    .await
    .map_err(|e| JobError::from(Error::from(e)))?;
    let (id, code) = (stored.id, stored.verification_code);
    let text = CertificateText {
        student_name: row.student_name.clone(),
        course_title: row.course_title,
        instructor_name: row.instructor_name,
        completed_on: completed_at.format("%B %-d, %Y").to_string(),
        verification_code: code.clone(),
        verify_url: verify_url(services, id),
    };
    let course_title = text.course_title.clone();
    let pdf = tokio::task::spawn_blocking(move || render_pdf(&text))
        .await
        .map_err(|e| JobError::Retryable(format!("renderer stopped: {e}")))?
        .map_err(JobError::Permanent)?;
    let key = format!("certificates/{id}.pdf");
    let size = pdf.len() as i32;
    services
        .storage
        .put(&key, ByteStream::from(pdf), "application/pdf")
        .await
        .map_err(storage_error)?;
    let mut tx = services
        .db
        .begin()
        .await
        .map_err(|e| JobError::from(Error::from(e)))?;
    let first = sqlx::query_scalar!(
        r#"UPDATE certificates c SET pdf_key = $2, pdf_bytes = $3, issued_at = coalesce(c.issued_at, now())
             FROM (SELECT issued_at IS NULL AS first FROM certificates WHERE id = $1 FOR UPDATE) prev
            WHERE c.id = $1 RETURNING prev.first AS "first!""#,
        id,
        key,
        size,
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| JobError::from(Error::from(e)))?;
    let mail = if first {
        let mut vars = serde_json::Map::new();
        vars.insert("full_name".into(), row.student_name.into());
        vars.insert("course_title".into(), course_title.into());
        vars.insert("link".into(), verify_url(services, id).into());
        vars.insert("verification_code".into(), code.into());
        let job = Job::SendEmail(SendEmail {
            to: row.student_email,
            template: EmailTemplate::CertificateIssued,
            vars,
        });
        Some(
            jobs::insert(&mut tx, &job, None, None)
                .await
                .map_err(JobError::from)?,
        )
    } else {
        None
    };
    tx.commit()
        .await
        .map_err(|e| JobError::from(Error::from(e)))?;
    if let Some(mail) = mail {
        services.jobs.dispatch(&mail).await;
    }
    Ok(())
}

struct Fonts {
    regular: krilla::text::Font,
    bold: krilla::text::Font,
}

fn fonts() -> std::result::Result<&'static Fonts, String> {
    static FONTS: OnceLock<std::result::Result<Fonts, String>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            let load = |name: &str, data: &'static [u8]| {
                krilla::text::Font::new(data.into(), 0)
                    .ok_or_else(|| format!("the embedded certificate font {name} is not usable"))
            };
            Ok(Fonts {
                regular: load("DejaVuSans.ttf", FONT_REGULAR)?,
                bold: load("DejaVuSans-Bold.ttf", FONT_BOLD)?,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Renders a one-page landscape A4 certificate. Text is shaped and embedded as a font subset,
/// so any name DejaVu covers (Łukasz Żółć, Ngô Bảo Châu) comes out right.
pub fn render_pdf(text: &CertificateText) -> std::result::Result<Vec<u8>, String> {
    use krilla::Document;
    use krilla::color::rgb;
    use krilla::geom::{PathBuilder, Point, Rect};
    use krilla::num::NormalizedF32;
    use krilla::page::PageSettings;
    use krilla::paint::{Fill, Stroke};
    use krilla::text::TextDirection;

    let fonts = fonts()?;
    let (width, height) = (842.0_f32, 595.0_f32);
    let mut document = Document::new();
    let settings = PageSettings::from_wh(width, height).ok_or("bad page size")?;
    let mut page = document.start_page_with(settings);
    let mut surface = page.surface();

    // A frame.
    let frame = {
        let mut pb = PathBuilder::new();
        pb.push_rect(Rect::from_xywh(24.0, 24.0, width - 48.0, height - 48.0).ok_or("bad frame")?);
        pb.finish().ok_or("bad frame")?
    };
    surface.set_fill(None);
    surface.set_stroke(Some(Stroke {
        paint: rgb::Color::new(28, 25, 23).into(),
        width: 2.0,
        ..Default::default()
    }));
    surface.draw_path(&frame);
    surface.set_stroke(None);

    let ink = |surface: &mut krilla::surface::Surface, r, g, b| {
        surface.set_fill(Some(Fill {
            paint: rgb::Color::new(r, g, b).into(),
            opacity: NormalizedF32::ONE,
            rule: Default::default(),
        }));
    };
    // Centred lines: DejaVu's average advance is about 0.55 em, close enough to centre by.
    let line = |surface: &mut krilla::surface::Surface, y: f32, size: f32, bold: bool, s: &str| {
        let estimate = s.chars().count() as f32 * size * if bold { 0.62 } else { 0.55 };
        let x = ((width - estimate) / 2.0).max(48.0);
        let font = if bold {
            fonts.bold.clone()
        } else {
            fonts.regular.clone()
        };
        surface.draw_text(
            Point::from_xy(x, y),
            font,
            size,
            s,
            false,
            TextDirection::Auto,
        );
    };
    ink(&mut surface, 87, 83, 78);
    line(
        &mut surface,
        110.0,
        16.0,
        false,
        "CERTIFICATE OF COMPLETION",
    );
    ink(&mut surface, 28, 25, 23);
    line(&mut surface, 160.0, 14.0, false, "This certifies that");
    line(&mut surface, 215.0, 34.0, true, &text.student_name);
    line(&mut surface, 265.0, 14.0, false, "has completed the course");
    line(&mut surface, 310.0, 24.0, true, &text.course_title);
    line(
        &mut surface,
        350.0,
        13.0,
        false,
        &format!("taught by {}", text.instructor_name),
    );
    line(
        &mut surface,
        375.0,
        13.0,
        false,
        &format!("on {}", text.completed_on),
    );
    ink(&mut surface, 87, 83, 78);
    let small = |surface: &mut krilla::surface::Surface, y: f32, s: &str| {
        surface.draw_text(
            Point::from_xy(60.0, y),
            fonts.regular.clone(),
            10.0,
            s,
            false,
            TextDirection::Auto,
        );
    };
    small(
        &mut surface,
        500.0,
        &format!("Verification code: {}", text.verification_code),
    );
    small(
        &mut surface,
        516.0,
        &format!("Verify at {}", text.verify_url),
    );

    // The QR code of the verification URL, bottom right, one square per dark module.
    let qr =
        qrcode::QrCode::new(text.verify_url.as_bytes()).map_err(|e| format!("QR code: {e}"))?;
    let modules = qr.width();
    let size = 96.0_f32;
    let cell = size / modules as f32;
    let (ox, oy) = (width - 60.0 - size, height - 60.0 - size);
    let mut pb = PathBuilder::new();
    for (i, color) in qr.to_colors().iter().enumerate() {
        if *color == qrcode::Color::Dark {
            let (x, y) = ((i % modules) as f32, (i / modules) as f32);
            if let Some(r) = Rect::from_xywh(ox + x * cell, oy + y * cell, cell, cell) {
                pb.push_rect(r);
            }
        }
    }
    ink(&mut surface, 0, 0, 0);
    if let Some(path) = pb.finish() {
        surface.draw_path(&path);
    }
    surface.finish();
    page.finish();
    document.finish().map_err(|e| format!("PDF: {e:?}"))
}

/// A certificate as anyone can verify it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CertificateView {
    pub id: Uuid,
    pub verification_code: String,
    pub student_name: String,
    pub course_title: String,
    pub instructor_name: String,
    pub completed_at: DateTime<Utc>,
    pub issued_at: Option<DateTime<Utc>>,
    pub verify_url: String,
    /// A short-lived signed link to the PDF (`null` until it has been rendered).
    pub pdf_url: Option<String>,
    pub pdf_bytes: Option<i32>,
}

struct CertificateRow {
    id: Uuid,
    verification_code: String,
    student_name: String,
    course_title: String,
    instructor_name: String,
    completed_at: DateTime<Utc>,
    issued_at: Option<DateTime<Utc>>,
    pdf_key: Option<String>,
    pdf_bytes: Option<i32>,
}

/// Public verification, by certificate id or verification code.
pub async fn verify(services: &Services, id_or_code: &str) -> Result<CertificateView> {
    let id = Uuid::parse_str(id_or_code).ok();
    let row = sqlx::query_as!(
        CertificateRow,
        "SELECT id, verification_code, student_name, course_title, instructor_name, completed_at,
                issued_at, pdf_key, pdf_bytes
           FROM certificates WHERE id = $1 OR verification_code = upper($2)",
        id,
        id_or_code.trim(),
    )
    .fetch_optional(&services.db)
    .await?;
    let row = row.ok_or(Error::NotFound("certificate"))?;
    let pdf_url = match &row.pdf_key {
        Some(key) => Some(pdf_link(services, key).await?),
        None => None,
    };
    Ok(CertificateView {
        verify_url: verify_url(services, row.id),
        id: row.id,
        verification_code: row.verification_code,
        student_name: row.student_name,
        course_title: row.course_title,
        instructor_name: row.instructor_name,
        completed_at: row.completed_at,
        issued_at: row.issued_at,
        pdf_url,
        pdf_bytes: row.pdf_bytes,
    })
}

/// A short-lived signed link to a certificate's stored PDF.
async fn pdf_link(services: &Services, key: &str) -> Result<String> {
    Ok(services
        .storage
        .presign_get(key, PDF_LINK_TTL)
        .await
        .map_err(|e| Error::Unavailable(crate::error::Dependency::Storage, Box::new(e)))?
        .url)
}

/// Where a student finds their certificate: its public verification page and its PDF.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CertificateRef {
    pub id: Uuid,
    /// The verification code printed on the certificate.
    pub code: String,
    /// The public verification page (no login needed).
    pub verify_url: String,
    /// A short-lived signed link to the PDF.
    pub pdf_url: String,
}

impl CertificateRef {
    async fn new(services: &Services, id: Uuid, code: String, pdf_key: &str) -> Result<Self> {
        Ok(CertificateRef {
            verify_url: verify_url(services, id),
            pdf_url: pdf_link(services, pdf_key).await?,
            id,
            code,
        })
    }
}

/// The certificate columns a query joins onto its rows (`cert.id AS certificate_id,
/// cert.verification_code AS certificate_code, cert.pdf_key AS certificate_pdf_key` from
/// `LEFT JOIN certificates cert ON cert.enrollment_id = e.id AND cert.issued_at IS NOT NULL`), so
/// a list of enrollments carries its certificates without a query per row.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct IssuedColumns {
    certificate_id: Option<Uuid>,
    certificate_code: Option<String>,
    certificate_pdf_key: Option<String>,
}

impl IssuedColumns {
    pub(crate) fn new(
        certificate_id: Option<Uuid>,
        certificate_code: Option<String>,
        certificate_pdf_key: Option<String>,
    ) -> Self {
        IssuedColumns {
            certificate_id,
            certificate_code,
            certificate_pdf_key,
        }
    }

    /// The certificate, once issued (rendered and stored).
    pub(crate) async fn reference(&self, services: &Services) -> Result<Option<CertificateRef>> {
        match (
            self.certificate_id,
            &self.certificate_code,
            &self.certificate_pdf_key,
        ) {
            (Some(id), Some(code), Some(key)) => Ok(Some(
                CertificateRef::new(services, id, code.clone(), key).await?,
            )),
            _ => Ok(None),
        }
    }
}

/// One of the caller's certificates, with its course.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MyCertificate {
    #[serde(flatten)]
    pub certificate: CertificateRef,
    pub course_id: Uuid,
    pub course_title: String,
    pub course_slug: String,
    pub issued_at: DateTime<Utc>,
}

struct MyCertificateRow {
    id: Uuid,
    verification_code: String,
    pdf_key: String,
    issued_at: DateTime<Utc>,
    course_id: Uuid,
    course_title: String,
    course_slug: String,
}

/// `GET /me/certificates`: the caller's issued certificates, most recent first.
pub async fn mine(
    services: &Services,
    caller: &Principal,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<crate::page::Page<MyCertificate>> {
    use crate::page;
    let user = caller.require_user()?;
    let limit = page::limit(limit);
    let after: Option<(DateTime<Utc>, Uuid)> = cursor
        .map(|c| page::decode_cursor(&services.config.jwt_secret, c))
        .transpose()?;
    let rows = sqlx::query_as!(
        MyCertificateRow,
        r#"SELECT cert.id, cert.verification_code, cert.pdf_key AS "pdf_key!", cert.issued_at AS "issued_at!",
                  c.id AS course_id, c.title AS course_title, c.slug AS course_slug
             FROM enrollments e
             JOIN certificates cert ON cert.enrollment_id = e.id
             JOIN courses c ON c.id = e.course_id
            WHERE e.user_id = $1 AND cert.issued_at IS NOT NULL AND cert.pdf_key IS NOT NULL
              AND ($2::timestamptz IS NULL OR (cert.issued_at, cert.id) < ($2, $3::uuid))
            ORDER BY cert.issued_at DESC, cert.id DESC LIMIT $4"#,
        user.id,
        after.map(|a| a.0),
        after.map(|a| a.1),
        limit,
    )
    .fetch_all(&services.db)
    .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| {
            rows.last()
                .map(|r| page::encode_cursor(&services.config.jwt_secret, &(r.issued_at, r.id)))
        })
        .flatten();
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        items.push(MyCertificate {
            certificate: CertificateRef::new(services, r.id, r.verification_code, &r.pdf_key)
                .await?,
            course_id: r.course_id,
            course_title: r.course_title,
            course_slug: r.course_slug,
            issued_at: r.issued_at,
        });
    }
    Ok(crate::page::Page { items, next_cursor })
}

/// Re-renders a certificate (after a name change, say): its student or an admin.
pub async fn reissue(services: &Services, caller: &Principal, id: Uuid) -> Result<JobReference> {
    let mut tx = services.db.begin().await?;
    let owner = sqlx::query!(
        "SELECT c.enrollment_id, e.user_id FROM certificates c JOIN enrollments e ON e.id = c.enrollment_id
          WHERE c.id = $1",
        id,
    )
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| (r.enrollment_id, r.user_id));
    let (enrollment_id, user_id) = owner.ok_or(Error::NotFound("certificate"))?;
    if !(caller.is_admin() || caller.user_id() == Some(user_id)) {
        return Err(Error::NotFound("certificate"));
    }
    let job = queue_issue(&mut tx, enrollment_id, caller.user_id()).await?;
    tx.commit().await?;
    services.jobs.dispatch(&job).await;
    Ok(job.reference())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_readable_and_distinct() {
        let a = new_code();
        assert_eq!(a.len(), 14);
        assert!(
            a.chars()
                .all(|c| c == '-' || c.is_ascii_uppercase() || c.is_ascii_digit())
        );
        assert!(!a.contains('0') && !a.contains('O') && !a.contains('1') && !a.contains('I'));
        assert_ne!(a, new_code());
    }
}

//! Fixtures written straight into the database, for tests and benchmarks that need many users or
//! a catalogue faster than the API could register them (argon2id makes registration slow on
//! purpose). Tokens are signed like the API's own, for sessions that really exist.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::JWT_SECRET;

/// `n` active, verified accounts with the given role, each with a live session; returns their ids
/// and access tokens (valid for an hour).
pub async fn mint_users(pool: &PgPool, n: usize, role: &str) -> Vec<(Uuid, String)> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let sessions: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, full_name, role, email_verified_at)
         SELECT id, 'user-' || id || '@example.com', 'not-a-hash', 'Learner ' || ord, $2, now()
           FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, ord)",
    )
    .bind(&ids)
    .bind(role)
    .execute(pool)
    .await
    .expect("insert users");
    sqlx::query(
        "INSERT INTO sessions (id, user_id, expires_at)
         SELECT s, u, now() + interval '1 day' FROM unnest($1::uuid[], $2::uuid[]) AS x(s, u)",
    )
    .bind(&sessions)
    .bind(&ids)
    .execute(pool)
    .await
    .expect("insert sessions");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(hex::encode(&Sha256::digest(JWT_SECRET.as_bytes())[..8]));
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let now = chrono::Utc::now().timestamp();
    ids.iter()
        .zip(&sessions)
        .map(|(id, sid)| {
            let claims = serde_json::json!({
                "sub": id, "role": role, "sid": sid, "iat": now, "exp": now + 3600,
                "jti": Uuid::new_v4(), "iss": "lectern"
            });
            (
                *id,
                jsonwebtoken::encode(&header, &claims, &key).expect("sign"),
            )
        })
        .collect()
}

/// A published course with one section holding `videos` processed videos of `duration` seconds
/// each, as the media pipeline leaves them. Returns the course and video ids.
pub async fn published_course_with_videos(
    pool: &PgPool,
    instructor: Uuid,
    title: &str,
    price: &str,
    videos: usize,
    duration: f64,
) -> (Uuid, Vec<Uuid>) {
    let course = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO courses (id, instructor_id, title, slug, price, status, published_at)
         VALUES ($1, $2, $3, $4, $5::numeric, 'published', now())",
    )
    .bind(course)
    .bind(instructor)
    .bind(title)
    .bind(format!(
        "{}-{}",
        lectern_core::courses::slugify(title),
        course.simple()
    ))
    .bind(price)
    .execute(pool)
    .await
    .expect("insert course");
    let section = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO sections (id, course_id, title, position) VALUES ($1, $2, 'Lessons', 1)",
    )
    .bind(section)
    .bind(course)
    .execute(pool)
    .await
    .expect("insert section");
    let mut ids = Vec::new();
    for i in 0..videos {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO media (id, owner_id, course_id, section_id, kind, state, title, duration_secs)
             VALUES ($1, $2, $3, $4, 'video', 'ready', $5, $6)",
        )
        .bind(id)
        .bind(instructor)
        .bind(course)
        .bind(section)
        .bind(format!("Lesson {}", i + 1))
        .bind(duration)
        .execute(pool)
        .await
        .expect("insert video");
        ids.push(id);
    }
    (course, ids)
}

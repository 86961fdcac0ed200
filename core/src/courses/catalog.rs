//! The public catalogue: full-text search with a typo-tolerant fallback, filters, orderings with
//! keyset cursors, and personal recommendations. Only published, undeleted courses appear, and
//! every query here matches the partial indexes of the courses migration.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{CategoryRef, InstructorRef, input};
use crate::Services;
use crate::auth::Principal;
use crate::config::Secret;
use crate::error::{Error, FieldErrors, Result};
use crate::page::{self, Page};

/// A course as a list shows it (no long texts).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CourseCard {
    pub id: Uuid,
    pub slug: String,
    pub title: String,
    pub short_description: String,
    pub price: String,
    pub currency: String,
    pub is_free: bool,
    pub difficulty: String,
    pub language: String,
    pub tags: Vec<String>,
    pub thumbnail_media_id: Option<Uuid>,
    /// The thumbnail as a stable URL a plain `<img>` loads without a login (see
    /// `GET /courses/{id}/thumbnail`); `null` without a thumbnail.
    pub thumbnail_url: Option<String>,
    pub instructor: InstructorRef,
    pub category: Option<CategoryRef>,
    pub rating_average: f64,
    pub rating_count: i32,
    pub enrollment_count: i32,
    pub published_at: Option<DateTime<Utc>>,
    /// Search relevance or recommendation score, when the list is ranked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

#[derive(sqlx::FromRow)]
struct CardRow {
    id: Uuid,
    slug: String,
    title: String,
    short_description: String,
    price: String,
    currency: String,
    is_free: bool,
    difficulty: String,
    language: String,
    tags: Vec<String>,
    thumbnail_media_id: Option<Uuid>,
    instructor_id: Uuid,
    instructor_name: String,
    category_id: Option<Uuid>,
    category_slug: Option<String>,
    category_name: Option<String>,
    rating_average: f64,
    rating_count: i32,
    enrollment_count: i32,
    published_at: Option<DateTime<Utc>>,
    sort_key: Option<String>,
    score: Option<f64>,
}

impl From<CardRow> for CourseCard {
    fn from(r: CardRow) -> Self {
        let category = match (r.category_id, r.category_slug, r.category_name) {
            (Some(id), Some(slug), Some(name)) => Some(CategoryRef { id, slug, name }),
            _ => None,
        };
        CourseCard {
            id: r.id,
            slug: r.slug,
            title: r.title,
            short_description: r.short_description,
            price: r.price,
            currency: r.currency,
            is_free: r.is_free,
            difficulty: r.difficulty,
            language: r.language,
            tags: r.tags,
            thumbnail_media_id: r.thumbnail_media_id,
            thumbnail_url: None,
            instructor: InstructorRef {
                id: r.instructor_id,
                full_name: r.instructor_name,
            },
            category,
            rating_average: r.rating_average,
            rating_count: r.rating_count,
            enrollment_count: r.enrollment_count,
            published_at: r.published_at,
            score: r.score,
        }
    }
}

impl CourseCard {
    /// Fills in the URLs of the card's images.
    pub(crate) fn with_image_urls(mut self, services: &Services) -> Self {
        self.thumbnail_url =
            super::images::thumbnail_url(services, self.id, self.thumbnail_media_id);
        self
    }
}

const CARD_COLUMNS: &str = "c.id, c.slug, c.title, c.short_description, c.price::text AS price, c.currency,
    c.is_free, c.difficulty, c.language, c.tags, c.thumbnail_media_id, c.instructor_id,
    u.full_name AS instructor_name, c.category_id, cat.slug AS category_slug, cat.name AS category_name,
    c.rating_average::float8 AS rating_average, c.rating_count, c.enrollment_count, c.published_at";

const PUBLIC: &str = "c.status = 'published' AND c.deleted_at IS NULL";

/// `GET /courses` parameters. Everything arrives as text and is checked here, so a bad value is
/// a 422 naming the parameter.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Full-text query (websearch syntax: words, "phrases", -exclusions); typos are tolerated.
    pub q: Option<String>,
    /// Category slug; a top-level category includes its subcategories.
    pub category: Option<String>,
    pub difficulty: Option<String>,
    pub min_price: Option<String>,
    pub max_price: Option<String>,
    pub is_free: Option<String>,
    pub min_rating: Option<String>,
    pub language: Option<String>,
    /// Instructor id.
    pub instructor: Option<String>,
    /// `relevance` (default with `q`), `newest` (default without), `rating`, `popularity`,
    /// `price` or `-price`.
    pub order_by: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Order {
    Relevance,
    Newest,
    Rating,
    Popularity,
    PriceAsc,
    PriceDesc,
}

impl Order {
    const NAMES: &'static str = "relevance, newest, rating, popularity, price, -price";

    fn parse(s: &str) -> Option<Order> {
        Some(match s {
            "relevance" => Order::Relevance,
            "newest" | "-published_at" | "-created_at" => Order::Newest,
            "rating" | "-rating" => Order::Rating,
            "popularity" | "-enrollment_count" => Order::Popularity,
            "price" => Order::PriceAsc,
            "-price" => Order::PriceDesc,
            _ => return None,
        })
    }

    /// The sort key's SQL, its type for the cursor comparison, and whether it descends.
    fn key(self) -> (&'static str, &'static str, bool) {
        match self {
            Order::Relevance => ("c.rank", "float8", true),
            Order::Newest => ("c.published_at", "timestamptz", true),
            Order::Rating => ("c.rating_num", "numeric", true),
            Order::Popularity => ("c.enrollment_count", "integer", true),
            Order::PriceAsc => ("c.price_num", "numeric", false),
            Order::PriceDesc => ("c.price_num", "numeric", true),
        }
    }
}

struct Filters {
    q: Option<String>,
    category: Option<String>,
    /// The category and its subcategories, once resolved.
    category_ids: Vec<Uuid>,
    difficulty: Option<String>,
    min_price_cents: Option<i64>,
    max_price_cents: Option<i64>,
    is_free: Option<bool>,
    min_rating: Option<f64>,
    language: Option<String>,
    instructor: Option<Uuid>,
    order: Order,
    limit: i64,
    after: Option<(String, Uuid)>,
    /// The typo-tolerant pass: titles by trigram word similarity, used when the exact full-text
    /// pass finds nothing.
    fuzzy: bool,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `secret` checks the cursor's signature (see `page`).
fn parse(p: &SearchParams, secret: &Secret) -> Result<Filters> {
    let mut fields = FieldErrors::new();
    let q = nonempty(&p.q).map(str::to_owned);
    if q.as_ref().is_some_and(|q| q.chars().count() > 200) {
        fields.add("q", "must be at most 200 characters");
    }
    let difficulty = nonempty(&p.difficulty).map(str::to_owned);
    if let Some(d) = &difficulty
        && !input::DIFFICULTIES.contains(&d.as_str())
    {
        fields.add(
            "difficulty",
            format!("must be one of {}", input::DIFFICULTIES.join(", ")),
        );
    }
    let mut price = |name: &str, v: &Option<String>| {
        nonempty(v).and_then(|s| {
            input::parse_price(&serde_json::Value::String(s.into()), 2)
                .map_err(|e| fields.add(name, e))
                .ok()
        })
    };
    let min_price_cents = price("min_price", &p.min_price);
    let max_price_cents = price("max_price", &p.max_price);
    if let (Some(lo), Some(hi)) = (min_price_cents, max_price_cents)
        && lo > hi
    {
        fields.add("max_price", "must not be below min_price");
    }
    let is_free = match nonempty(&p.is_free) {
        None => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(_) => {
            fields.add("is_free", "must be true or false");
            None
        }
    };
    let min_rating = nonempty(&p.min_rating).and_then(|s| match s.parse::<f64>() {
        Ok(r) if (0.0..=5.0).contains(&r) => Some(r),
        _ => {
            fields.add("min_rating", "must be a number from 0 to 5");
            None
        }
    });
    let instructor = nonempty(&p.instructor).and_then(|s| {
        Uuid::parse_str(s)
            .map_err(|_| fields.add("instructor", "must be an instructor id"))
            .ok()
    });
    let order = match nonempty(&p.order_by) {
        None if q.is_some() => Order::Relevance,
        None => Order::Newest,
        Some(name) => match Order::parse(name) {
            Some(Order::Relevance) if q.is_none() => {
                fields.add("order_by", "relevance needs a query q");
                Order::Newest
            }
            Some(o) => o,
            None => {
                fields.add("order_by", format!("must be one of {}", Order::NAMES));
                Order::Newest
            }
        },
    };
    let limit = match nonempty(&p.limit) {
        None => page::limit(None),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                fields.add("limit", "must be a whole number from 1 to 100");
                20
            }
        },
    };
    let mut fuzzy = false;
    let after = match nonempty(&p.cursor) {
        None => None,
        Some(c) => match page::decode_cursor::<(String, Uuid, String)>(secret, c) {
            Ok((key, id, tag)) if tag.trim_end_matches('~') == format!("{order:?}") => {
                fuzzy = tag.ends_with('~');
                Some((key, id))
            }
            _ => {
                fields.add("cursor", "is not a cursor of this search and order");
                None
            }
        },
    };
    fields.into_result()?;
    Ok(Filters {
        q,
        category: nonempty(&p.category).map(str::to_owned),
        category_ids: Vec::new(),
        difficulty,
        min_price_cents,
        max_price_cents,
        is_free,
        min_rating,
        language: nonempty(&p.language).map(str::to_owned),
        instructor,
        order,
        limit,
        after,
        fuzzy,
    })
}

/// Builds the search statement. Only fixed SQL fragments are pushed; every value is a bind. The
/// inner select computes the rank; the outer one pages over it (PostgreSQL flattens the nesting).
fn build(f: &Filters) -> QueryBuilder<Postgres> {
    let (key, key_type, desc) = f.order.key();
    let mut qb = QueryBuilder::new("SELECT c.*, ");
    qb.push(format_args!(
        "({key})::text AS sort_key, c.rank AS score FROM (SELECT "
    ))
    .push(CARD_COLUMNS)
    .push(", c.price AS price_num, c.rating_average AS rating_num");
    match &f.q {
        // Weighted title (A) > short description (B) > description (C) > tags (D).
        Some(q) if !f.fuzzy => {
            qb.push(", ts_rank(c.search_vector, websearch_to_tsquery('english', ")
                .push_bind(q)
                .push("))::float8 AS rank");
        }
        // The typo pass ranks by how closely the query matches a stretch of the title.
        Some(q) => {
            qb.push(", word_similarity(")
                .push_bind(q)
                .push(", c.title)::float8 AS rank");
        }
        None => {
            qb.push(", 0::float8 AS rank");
        }
    }
    qb.push(" FROM courses c JOIN users u ON u.id = c.instructor_id LEFT JOIN categories cat ON cat.id = c.category_id WHERE ")
        .push(PUBLIC);
    match &f.q {
        Some(q) if f.fuzzy => {
            qb.push(" AND ").push_bind(q).push(" <% c.title");
        }
        Some(q) => {
            qb.push(" AND c.search_vector @@ websearch_to_tsquery('english', ")
                .push_bind(q)
                .push(")");
        }
        None => {}
    }
    if let [id] = f.category_ids.as_slice() {
        // One category: an equality the (category_id, …) indexes can order by.
        qb.push(" AND c.category_id = ").push_bind(*id);
    } else if !f.category_ids.is_empty() {
        qb.push(" AND c.category_id = ANY(")
            .push_bind(f.category_ids.clone())
            .push(")");
    } else if let Some(slug) = &f.category {
        qb.push(" AND c.category_id IN (SELECT id FROM categories WHERE slug = ")
            .push_bind(slug)
            .push(" OR parent_id IN (SELECT id FROM categories WHERE slug = ")
            .push_bind(slug)
            .push("))");
    }
    if let Some(d) = &f.difficulty {
        qb.push(" AND c.difficulty = ").push_bind(d);
    }
    if let Some(cents) = f.min_price_cents {
        qb.push(" AND c.price >= ")
            .push_bind(cents)
            .push("::numeric / 100");
    }
    if let Some(cents) = f.max_price_cents {
        qb.push(" AND c.price <= ")
            .push_bind(cents)
            .push("::numeric / 100");
    }
    if let Some(free) = f.is_free {
        qb.push(" AND c.is_free = ").push_bind(free);
    }
    if let Some(r) = f.min_rating {
        qb.push(" AND c.rating_average >= ")
            .push_bind(r)
            .push("::numeric");
    }
    if let Some(l) = &f.language {
        qb.push(" AND c.language = ").push_bind(l);
    }
    if let Some(i) = f.instructor {
        qb.push(" AND c.instructor_id = ").push_bind(i);
    }
    qb.push(") c");
    if let Some((k, id)) = &f.after {
        let cmp = if desc { "<" } else { ">" };
        qb.push(format_args!(" WHERE ({key}, c.id) {cmp} ("))
            .push_bind(k.clone())
            .push(format_args!("::{key_type}, "))
            .push_bind(*id)
            .push(")");
    }
    let dir = if desc { "DESC" } else { "ASC" };
    qb.push(format_args!(" ORDER BY {key} {dir}, c.id {dir} LIMIT "))
        .push_bind(f.limit);
    qb
}

/// Searches the public catalogue.
pub async fn search(services: &Services, params: &SearchParams) -> Result<Page<CourseCard>> {
    let filters = parse(params, &services.config.jwt_secret)?;
    let mut filters = filters;
    if let Some(slug) = &filters.category {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM categories WHERE slug = $1
              UNION ALL
             SELECT c.id FROM categories c JOIN categories p ON p.id = c.parent_id WHERE p.slug = $1",
        )
        .bind(slug)
        .fetch_all(&services.db)
        .await?;
        if ids.is_empty() {
            return Err(Error::invalid(
                "category",
                format!("there is no category {slug:?}"),
            ));
        }
        filters.category_ids = ids;
    }
    let mut rows: Vec<CardRow> = build(&filters)
        .build_query_as()
        .fetch_all(&services.db)
        .await?;
    if rows.is_empty() && filters.q.is_some() && filters.after.is_none() && !filters.fuzzy {
        // Nothing matches exactly: perhaps a typo. Try the titles by trigram similarity.
        filters.fuzzy = true;
        rows = build(&filters)
            .build_query_as()
            .fetch_all(&services.db)
            .await?;
    }
    let tag = format!(
        "{:?}{}",
        filters.order,
        if filters.fuzzy { "~" } else { "" }
    );
    let next_cursor = (rows.len() as i64 == filters.limit)
        .then(|| {
            rows.last().map(|r| {
                page::encode_cursor(
                    &services.config.jwt_secret,
                    &(r.sort_key.clone().unwrap_or_default(), r.id, &tag),
                )
            })
        })
        .flatten();
    let ranked = filters.order == Order::Relevance;
    Ok(Page {
        items: rows
            .into_iter()
            .map(|r| {
                let mut card = CourseCard::from(r).with_image_urls(services);
                if !ranked {
                    card.score = None;
                }
                card
            })
            .collect(),
        next_cursor,
    })
}

/// The SQL of a search (its exact or its typo-tolerant pass), for `EXPLAIN` in tests.
/// The statement does not depend on the key, so cursors here are checked against an empty one.
pub fn search_sql(params: &SearchParams, fuzzy: bool) -> Result<String> {
    let mut filters = parse(params, &Secret::from(String::new()))?;
    filters.fuzzy = fuzzy;
    Ok(build(&filters).sql().as_str().to_owned())
}

/// Personal recommendations, in one statement: published courses the caller is not enrolled in
/// (and did not author), scored as
///
/// ```text
/// score = affinity + quality + momentum
///   affinity = 1.0 if the course shares a category with one of the caller's enrollments,
///              + 0.5 if its instructor taught one of them
///   quality  = Bayesian average rating / 5, i.e. (n·avg + 5·3.5) / (n + 5) / 5: a course with
///              one 5-star review does not outrank one with 200 reviews averaging 4.8
///   momentum = 0.5 · ln(1 + enrollments in the last 30 days) / ln(1 + 1000), capped at 0.5
/// ```
///
/// A new user has no affinity anywhere, so the list falls back to the best and busiest courses.
/// Candidates are the courses near the caller's enrollments plus the 200 most enrolled ones, so
/// the cost does not grow with the catalogue.
pub async fn recommendations(
    services: &Services,
    caller: &Principal,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<Page<CourseCard>> {
    let user = caller.require_user()?;
    let limit = page::limit(limit).min(50);
    // Keyset position of the last card: (score, enrollment_count, id), the ranking's own order.
    let after: Option<(f64, i32, Uuid)> = cursor
        .map(|c| page::decode_cursor(&services.config.jwt_secret, c))
        .transpose()?;
    let rows: Vec<CardRow> = sqlx::query_as(
        "WITH mine AS (SELECT course_id FROM enrollments WHERE user_id = $1),
              near AS (SELECT DISTINCT c.category_id, c.instructor_id FROM courses c JOIN mine m ON m.course_id = c.id),
              candidates AS (
                  (SELECT c.id FROM courses c
                    WHERE c.status = 'published' AND c.deleted_at IS NULL
                      AND (c.category_id IN (SELECT category_id FROM near) OR c.instructor_id IN (SELECT instructor_id FROM near))
                    ORDER BY c.enrollment_count DESC LIMIT 500)
                  UNION
                  (SELECT c.id FROM courses c WHERE c.status = 'published' AND c.deleted_at IS NULL
                    ORDER BY c.enrollment_count DESC, c.id DESC LIMIT 200))
         SELECT * FROM (
           SELECT c.id, c.slug, c.title, c.short_description, c.price::text AS price, c.currency,
                  c.is_free, c.difficulty, c.language, c.tags, c.thumbnail_media_id, c.instructor_id,
                  u.full_name AS instructor_name, c.category_id, cat.slug AS category_slug, cat.name AS category_name,
                  c.rating_average::float8 AS rating_average, c.rating_count, c.enrollment_count, c.published_at,
                  NULL::text AS sort_key,
                  (CASE WHEN c.category_id IN (SELECT category_id FROM near) THEN 1.0 ELSE 0 END
                   + CASE WHEN c.instructor_id IN (SELECT instructor_id FROM near) THEN 0.5 ELSE 0 END
                   + (c.rating_count * c.rating_average::float8 + 5 * 3.5) / (c.rating_count + 5) / 5
                   + least(0.5, 0.5 * ln(1 + recent.n) / ln(1001)))::float8 AS score
             FROM candidates k
             JOIN courses c ON c.id = k.id
             JOIN users u ON u.id = c.instructor_id
             LEFT JOIN categories cat ON cat.id = c.category_id
             CROSS JOIN LATERAL (SELECT count(*) AS n FROM enrollments e
                                  WHERE e.course_id = c.id AND e.enrolled_at > now() - interval '30 days') recent
            WHERE c.id NOT IN (SELECT course_id FROM mine) AND c.instructor_id <> $1) r
         WHERE $3::float8 IS NULL OR (score, enrollment_count, id) < ($3, $4, $5)
         ORDER BY score DESC, enrollment_count DESC, id DESC
         LIMIT $2"
    )
    .bind(user.id)
    .bind(limit + 1)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(after.map(|a| a.2))
    .fetch_all(&services.db)
    .await?;
    let mut rows = rows;
    let more = rows.len() > usize::try_from(limit).unwrap_or(0);
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = more.then(|| rows.last()).flatten().map(|r| {
        page::encode_cursor(
            &services.config.jwt_secret,
            &(r.score.unwrap_or(0.0), r.enrollment_count, r.id),
        )
    });
    Ok(Page {
        items: rows
            .into_iter()
            .map(|r| CourseCard::from(r).with_image_urls(services))
            .collect(),
        next_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> SearchParams {
        let mut p = SearchParams::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "q" => p.q = v,
                "order_by" => p.order_by = v,
                "min_price" => p.min_price = v,
                "max_price" => p.max_price = v,
                "min_rating" => p.min_rating = v,
                "limit" => p.limit = v,
                "is_free" => p.is_free = v,
                _ => unreachable!(),
            }
        }
        p
    }

    fn fields_of(p: &SearchParams) -> Vec<String> {
        match parse(p, &Secret::from(String::new())) {
            Err(Error::Validation(f)) => f.0.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn bad_parameters_name_their_field() {
        assert_eq!(
            fields_of(&params(&[("order_by", "DROP TABLE")])),
            ["order_by"]
        );
        assert_eq!(fields_of(&params(&[("min_price", "-5")])), ["min_price"]);
        assert_eq!(
            fields_of(&params(&[("min_price", "50"), ("max_price", "10")])),
            ["max_price"]
        );
        assert_eq!(fields_of(&params(&[("min_rating", "6")])), ["min_rating"]);
        assert_eq!(fields_of(&params(&[("limit", "1000")])), ["limit"]);
        assert_eq!(fields_of(&params(&[("is_free", "maybe")])), ["is_free"]);
        assert_eq!(
            fields_of(&params(&[("order_by", "relevance")])),
            ["order_by"]
        );
        assert!(fields_of(&params(&[("q", "rust"), ("order_by", "price")])).is_empty());
    }

    #[test]
    fn relevance_is_the_default_order_only_with_a_query() {
        assert_eq!(
            parse(&params(&[("q", "rust")]), &Secret::from(String::new()))
                .map(|f| f.order)
                .ok(),
            Some(Order::Relevance)
        );
        assert_eq!(
            parse(&params(&[]), &Secret::from(String::new()))
                .map(|f| f.order)
                .ok(),
            Some(Order::Newest)
        );
    }
}

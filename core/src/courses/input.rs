//! What an instructor may write into a course, checked field by field before any row changes.

use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::CourseRow;
use crate::error::{Error, FieldErrors, Result};

pub const MAX_TITLE_CHARS: usize = 200;
const MAX_SHORT_DESCRIPTION_CHARS: usize = 500;
const MAX_DESCRIPTION_CHARS: usize = 20_000;
const MAX_TARGET_AUDIENCE_CHARS: usize = 2_000;
/// Prices are in major units with at most two decimals, up to this amount.
const MAX_PRICE_CENTS: i64 = 100_000 * 100;
const MAX_LIST_ITEMS: usize = 30;
const MAX_LIST_ITEM_CHARS: usize = 300;
const MAX_TAGS: usize = 20;
const MAX_TAG_CHARS: usize = 50;

pub const DIFFICULTIES: &[&str] = &["beginner", "intermediate", "advanced", "all_levels"];

/// ISO 4217 codes accepted for prices, with their minor units.
const CURRENCIES: &[(&str, u32)] = &[
    ("AUD", 2),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("IDR", 2),
    ("INR", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("MXN", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("TRY", 2),
    ("UAH", 2),
    ("USD", 2),
    ("ZAR", 2),
];

/// Fields of a course to create or change; absent fields are left as they are.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CourseInput {
    pub title: Option<String>,
    pub short_description: Option<String>,
    pub description: Option<String>,
    /// A decimal in major units, as a string (`"19.99"`) or a number; `0` makes the course free.
    #[schema(value_type = Option<String>)]
    pub price: Option<serde_json::Value>,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: Option<String>,
    /// `beginner`, `intermediate`, `advanced` or `all_levels`.
    pub difficulty: Option<String>,
    /// ISO 639-1 language code, optionally with a region (`en`, `pt-BR`).
    pub language: Option<String>,
    /// A category's slug or id.
    pub category: Option<String>,
    pub tags: Option<Vec<String>>,
    pub prerequisites: Option<Vec<String>>,
    pub learning_outcomes: Option<Vec<String>>,
    pub target_audience: Option<String>,
    /// An image the instructor uploaded (media of kind `image`).
    pub thumbnail_media_id: Option<Uuid>,
}

/// A course's editable fields, complete and valid.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub title: String,
    pub short_description: String,
    pub description: String,
    pub price_cents: i64,
    pub currency: String,
    pub difficulty: String,
    pub language: String,
    pub category_id: Option<Uuid>,
    pub tags: Vec<String>,
    pub prerequisites: Vec<String>,
    pub learning_outcomes: Vec<String>,
    pub target_audience: String,
    pub thumbnail_media_id: Option<Uuid>,
}

impl Default for Draft {
    fn default() -> Self {
        Draft {
            title: String::new(),
            short_description: String::new(),
            description: String::new(),
            price_cents: 0,
            currency: "USD".into(),
            difficulty: "beginner".into(),
            language: "en".into(),
            category_id: None,
            tags: Vec::new(),
            prerequisites: Vec::new(),
            learning_outcomes: Vec::new(),
            target_audience: String::new(),
            thumbnail_media_id: None,
        }
    }
}

fn text(raw: &str, min: usize, max: usize) -> std::result::Result<String, String> {
    let value = raw.trim();
    let len = value.chars().count();
    if len < min {
        return Err(if min == 1 {
            "is required".into()
        } else {
            format!("must be at least {min} characters")
        });
    }
    if len > max {
        return Err(format!("must be at most {max} characters (got {len})"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        return Err("must not contain control characters".into());
    }
    Ok(value.to_owned())
}

fn list(
    raw: &[String],
    max_items: usize,
    max_chars: usize,
) -> std::result::Result<Vec<String>, String> {
    if raw.len() > max_items {
        return Err(format!("must have at most {max_items} items"));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for (i, item) in raw.iter().enumerate() {
        let item = text(item, 1, max_chars).map_err(|p| format!("item {}: {p}", i + 1))?;
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Ok(out)
}

/// Parses a price in major units into minor units, exactly (no floating point).
pub fn parse_price(raw: &serde_json::Value, decimals: u32) -> std::result::Result<i64, String> {
    let text = match raw {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err("must be a decimal number like \"19.99\"".into()),
    };
    if text.starts_with('-') {
        return Err("must not be negative".into());
    }
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("must be a decimal number like \"19.99\"".into());
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > decimals as usize {
        return Err(format!(
            "must have at most {decimals} decimal places in this currency"
        ));
    }
    let whole: i64 = whole
        .parse()
        .map_err(|_| format!("must be at most {}", MAX_PRICE_CENTS / 100))?;
    let frac_cents: i64 = format!("{frac:0<2}")
        .parse()
        .map_err(|_| "must be a decimal number".to_owned())?;
    let cents = whole
        .checked_mul(100)
        .and_then(|c| c.checked_add(frac_cents))
        .filter(|c| *c <= MAX_PRICE_CENTS)
        .ok_or_else(|| format!("must be at most {}", MAX_PRICE_CENTS / 100))?;
    Ok(cents)
}

pub fn currency_decimals(code: &str) -> Option<u32> {
    CURRENCIES.iter().find(|(c, _)| *c == code).map(|(_, d)| *d)
}

fn language(raw: &str) -> std::result::Result<String, String> {
    let value = raw.trim();
    let (lang, region) = value.split_once('-').unwrap_or((value, ""));
    let lang_ok = (2..=3).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_lowercase());
    let region_ok =
        region.is_empty() || (region.len() == 2 && region.bytes().all(|b| b.is_ascii_uppercase()));
    if lang_ok && region_ok {
        Ok(value.to_owned())
    } else {
        Err("must be an ISO 639-1 code such as \"en\" or \"pt-BR\"".into())
    }
}

impl Draft {
    pub(crate) fn from_row(row: &CourseRow) -> Result<Draft> {
        let decimals = currency_decimals(&row.currency).unwrap_or(2);
        let price_cents = parse_price(
            &serde_json::Value::String(row.price.clone()),
            decimals.max(2),
        )
        .map_err(|p| Error::Internal(format!("stored price {:?} {p}", row.price).into()))?;
        Ok(Draft {
            title: row.title.clone(),
            short_description: row.short_description.clone(),
            description: row.description.clone(),
            price_cents,
            currency: row.currency.clone(),
            difficulty: row.difficulty.clone(),
            language: row.language.clone(),
            category_id: row.category_id,
            tags: row.tags.clone(),
            prerequisites: row.prerequisites.clone(),
            learning_outcomes: row.learning_outcomes.clone(),
            target_audience: row.target_audience.clone(),
            thumbnail_media_id: row.thumbnail_media_id,
        })
    }

    /// Applies the fields present in `input`, recording every problem in `fields`. Category and
    /// thumbnail are looked up: the category must exist, the thumbnail must be the owner's image.
    pub(crate) async fn apply(
        &mut self,
        conn: &mut PgConnection,
        owner_id: Uuid,
        input: &CourseInput,
        fields: &mut FieldErrors,
    ) -> Result<()> {
        let mut set = |field: &str,
                       result: std::result::Result<String, String>,
                       slot: &mut String| match result {
            Ok(v) => *slot = v,
            Err(p) => fields.add(field, p),
        };
        if let Some(v) = &input.title {
            set("title", text(v, 1, MAX_TITLE_CHARS), &mut self.title);
        }
        if let Some(v) = &input.short_description {
            set(
                "short_description",
                text(v, 0, MAX_SHORT_DESCRIPTION_CHARS),
                &mut self.short_description,
            );
        }
        if let Some(v) = &input.description {
            set(
                "description",
                text(v, 0, MAX_DESCRIPTION_CHARS),
                &mut self.description,
            );
        }
        if let Some(v) = &input.target_audience {
            set(
                "target_audience",
                text(v, 0, MAX_TARGET_AUDIENCE_CHARS),
                &mut self.target_audience,
            );
        }
        if let Some(v) = &input.language {
            set("language", language(v), &mut self.language);
        }
        if let Some(v) = &input.difficulty {
            if DIFFICULTIES.contains(&v.as_str()) {
                self.difficulty = v.clone();
            } else {
                fields.add(
                    "difficulty",
                    format!("must be one of {}", DIFFICULTIES.join(", ")),
                );
            }
        }
        if let Some(v) = &input.currency {
            let code = v.trim().to_ascii_uppercase();
            if currency_decimals(&code).is_some() {
                self.currency = code;
            } else {
                fields.add(
                    "currency",
                    format!("{v:?} is not a supported ISO 4217 currency code"),
                );
            }
        }
        if let Some(v) = &input.price {
            let decimals = currency_decimals(&self.currency).unwrap_or(2);
            match parse_price(v, decimals) {
                Ok(cents) => self.price_cents = cents,
                Err(p) => fields.add("price", p),
            }
        } else if input.currency.is_some()
            && currency_decimals(&self.currency) == Some(0)
            && self.price_cents % 100 != 0
        {
            fields.add(
                "price",
                format!("{} has no minor units; give a whole price", self.currency),
            );
        }
        let mut set_list = |field: &str,
                            raw: &Option<Vec<String>>,
                            max_items,
                            max_chars,
                            slot: &mut Vec<String>| {
            if let Some(items) = raw {
                match list(items, max_items, max_chars) {
                    Ok(v) => *slot = v,
                    Err(p) => fields.add(field, p),
                }
            }
        };
        set_list(
            "prerequisites",
            &input.prerequisites,
            MAX_LIST_ITEMS,
            MAX_LIST_ITEM_CHARS,
            &mut self.prerequisites,
        );
        set_list(
            "learning_outcomes",
            &input.learning_outcomes,
            MAX_LIST_ITEMS,
            MAX_LIST_ITEM_CHARS,
            &mut self.learning_outcomes,
        );
        if let Some(tags) = &input.tags {
            let lowered: Vec<String> = tags.iter().map(|t| t.trim().to_lowercase()).collect();
            match list(&lowered, MAX_TAGS, MAX_TAG_CHARS) {
                Ok(v) => self.tags = v,
                Err(p) => fields.add("tags", p),
            }
        }
        if let Some(category) = &input.category {
            let id = Uuid::parse_str(category).ok();
            let found: Option<Uuid> =
                sqlx::query_scalar("SELECT id FROM categories WHERE id = $1 OR slug = $2")
                    .bind(id)
                    .bind(category.trim())
                    .fetch_optional(&mut *conn)
                    .await?;
            match found {
                Some(id) => self.category_id = Some(id),
                None => fields.add("category", format!("there is no category {category:?}")),
            }
        }
        if let Some(media_id) = input.thumbnail_media_id {
            let kind: Option<String> = sqlx::query_scalar(
                "SELECT kind FROM media WHERE id = $1 AND owner_id = $2 AND deleted_at IS NULL",
            )
            .bind(media_id)
            .bind(owner_id)
            .fetch_optional(&mut *conn)
            .await?;
            match kind.as_deref() {
                Some("image") => self.thumbnail_media_id = Some(media_id),
                Some(other) => fields.add(
                    "thumbnail_media_id",
                    format!("must be an image, not {other}"),
                ),
                None => fields.add("thumbnail_media_id", "no such media of yours"),
            }
        }
        Ok(())
    }

    /// Inserts the course under `slug`; `false` (nothing written) when a concurrent creation
    /// committed that slug first.
    pub(crate) async fn insert(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        instructor_id: Uuid,
        slug: &str,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO courses (id, instructor_id, slug, title, short_description, description, price, currency,
                                  difficulty, language, category_id, tags, prerequisites, learning_outcomes,
                                  target_audience, thumbnail_media_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7::numeric / 100, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             ON CONFLICT (slug) DO NOTHING",
        )
        .bind(id)
        .bind(instructor_id)
        .bind(slug)
        .bind(&self.title)
        .bind(&self.short_description)
        .bind(&self.description)
        .bind(self.price_cents)
        .bind(&self.currency)
        .bind(&self.difficulty)
        .bind(&self.language)
        .bind(self.category_id)
        .bind(&self.tags)
        .bind(&self.prerequisites)
        .bind(&self.learning_outcomes)
        .bind(&self.target_audience)
        .bind(self.thumbnail_media_id)
        .execute(conn)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    pub(crate) async fn update(&self, conn: &mut PgConnection, id: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE courses SET title = $2, short_description = $3, description = $4, price = $5::numeric / 100,
                    currency = $6, difficulty = $7, language = $8, category_id = $9, tags = $10,
                    prerequisites = $11, learning_outcomes = $12, target_audience = $13,
                    thumbnail_media_id = $14, updated_at = now()
              WHERE id = $1",
        )
        .bind(id)
        .bind(&self.title)
        .bind(&self.short_description)
        .bind(&self.description)
        .bind(self.price_cents)
        .bind(&self.currency)
        .bind(&self.difficulty)
        .bind(&self.language)
        .bind(self.category_id)
        .bind(&self.tags)
        .bind(&self.prerequisites)
        .bind(&self.learning_outcomes)
        .bind(&self.target_audience)
        .bind(self.thumbnail_media_id)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prices_parse_exactly() {
        assert_eq!(parse_price(&json!("19.99"), 2), Ok(1999));
        assert_eq!(parse_price(&json!(19.9), 2), Ok(1990));
        assert_eq!(parse_price(&json!(0), 2), Ok(0));
        assert_eq!(parse_price(&json!("100000"), 2), Ok(10_000_000));
        assert_eq!(parse_price(&json!("1500"), 0), Ok(150_000));
        assert!(parse_price(&json!("-1"), 2).is_err());
        assert!(parse_price(&json!("100000.01"), 2).is_err());
        assert!(parse_price(&json!("1e9"), 2).is_err());
        assert!(parse_price(&json!("19.999"), 2).is_err());
        assert!(parse_price(&json!("12.5"), 0).is_err());
        assert!(parse_price(&json!("99999999999999999999999"), 2).is_err());
        assert!(parse_price(&json!(true), 2).is_err());
        assert!(parse_price(&json!(""), 2).is_err());
    }

    #[test]
    fn languages_are_iso_codes() {
        assert!(language("en").is_ok());
        assert!(language("pt-BR").is_ok());
        assert!(language("english").is_err());
        assert!(language("EN").is_err());
    }
}

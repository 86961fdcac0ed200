//! Categories, nested one level (a subcategory's parent is a top-level category). Admins manage
//! them; everyone may list them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Services;
use crate::auth::Principal;
use crate::error::{Error, FieldErrors, Result};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CategoryView {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub slug: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryInput {
    pub name: String,
    /// Defaults to the name, slugified.
    pub slug: Option<String>,
    /// A top-level category's slug or id.
    pub parent: Option<String>,
}

/// Every category, parents before their children, alphabetically.
pub async fn list(services: &Services) -> Result<Vec<CategoryView>> {
    Ok(sqlx::query_as(
        "SELECT c.id, c.parent_id, c.slug, c.name FROM categories c
           LEFT JOIN categories p ON p.id = c.parent_id
          ORDER BY coalesce(p.name, c.name), c.parent_id IS NOT NULL, c.name",
    )
    .fetch_all(&services.db)
    .await?)
}

pub async fn create(
    services: &Services,
    caller: &Principal,
    input: &CategoryInput,
) -> Result<CategoryView> {
    caller.require_admin()?;
    let mut fields = FieldErrors::new();
    let name = input.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        fields.add("name", "must be 1 to 100 characters");
    }
    let slug = super::slugify(input.slug.as_deref().unwrap_or(&name));
    if !slug
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        fields.add("slug", "must use only a-z, 0-9 and dashes");
    }
    let parent_id = match input.parent.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(p) => {
            let row: Option<(Uuid, Option<Uuid>)> =
                sqlx::query_as("SELECT id, parent_id FROM categories WHERE id = $1 OR slug = $2")
                    .bind(Uuid::parse_str(p).ok())
                    .bind(p)
                    .fetch_optional(&services.db)
                    .await?;
            match row {
                Some((id, None)) => Some(id),
                Some((_, Some(_))) => {
                    fields.add(
                        "parent",
                        "categories nest one level only: the parent must be top-level",
                    );
                    None
                }
                None => {
                    fields.add("parent", format!("there is no category {p:?}"));
                    None
                }
            }
        }
    };
    fields.into_result()?;
    let inserted = sqlx::query_as::<_, CategoryView>(
        "INSERT INTO categories (id, parent_id, slug, name) VALUES ($1, $2, $3, $4)
         ON CONFLICT (slug) DO NOTHING RETURNING id, parent_id, slug, name",
    )
    .bind(Uuid::now_v7())
    .bind(parent_id)
    .bind(&slug)
    .bind(&name)
    .fetch_optional(&services.db)
    .await?;
    inserted.ok_or_else(|| Error::Conflict {
        code: "category_exists",
        message: format!("a category with the slug {slug:?} exists"),
    })
}

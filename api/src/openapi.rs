//! Finishing the OpenAPI document after every route has added its operation.
//!
//! Some answers come from the framework around the handlers, not from the handlers themselves,
//! so every route can give them by construction:
//!
//! | status | where | why |
//! |---|---|---|
//! | 400 | path or query parameters, or a body | the path, query or body does not parse (`error::path_config`, `query_config`, `json_config`) |
//! | 401 | `security` set (also optional security) | the bearer token is missing, wrong, expired or its session ended (`auth::Caller`) |
//! | 403 | `security` set and required | the caller's role or state does not allow it (core's checks) |
//! | 404 | path parameters | the object does not exist or the caller may not see it |
//! | 413, 415 | a JSON body | the body is over `JSON_LIMIT`, or not `application/json` |
//! | 422 | every route | `input_guard` refuses control characters in any path, query or body string |
//! | 500, 503 | every route | a bug; a dependency down (`Retry-After`) |
//!
//! [`finish`] adds each of them, with the error schema, to every operation that does not list it
//! already (a route's own description of a status wins), so routes added later are covered too.
//! Route-specific answers (402, 409, 429...) stay in each route's `#[utoipa::path]`.

use std::collections::BTreeMap;

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder,
    Type,
};

/// The error answers every matching operation gets, in the order of the table above.
fn standard(op: &Operation, path: &str) -> Vec<(&'static str, &'static str)> {
    let has_path_params = path.contains('{');
    let has_query = op
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    let has_body = op.request_body.is_some();
    let json_body = op
        .request_body
        .as_ref()
        .is_some_and(|b| b.content.keys().any(|c| c.contains("json")));
    let security = op.security.as_deref().unwrap_or_default();
    let secured = security
        .iter()
        .any(|s| *s != SecurityRequirement::default());
    let optional = security.contains(&SecurityRequirement::default());

    let mut out = Vec::new();
    if has_path_params || has_query || has_body {
        out.push((
            "400",
            "malformed_request: the path, query string or body does not parse (an id that is \
             not a UUID, a parameter of the wrong type, a body that is not the schema's JSON)",
        ));
    }
    if secured {
        out.push((
            "401",
            "unauthenticated or session_revoked: the bearer token is missing, wrong or expired, \
             or its session ended; user_required: the operator token on a user's route",
        ));
        if !optional {
            out.push((
                "403",
                "forbidden (or a more precise code): the caller's role or account does not \
                 allow this",
            ));
        }
    }
    if has_path_params {
        out.push((
            "404",
            "not_found: no such object, or one the caller may not see",
        ));
    }
    if json_body {
        out.push((
            "413",
            "payload_too_large: the JSON body is larger than 64 KiB",
        ));
        out.push((
            "415",
            "unsupported_media_type: send the body as application/json",
        ));
    }
    out.push((
        "422",
        "validation_failed: `fields` names each invalid field with its problems (a control \
         character in any path, query or body string is refused here too)",
    ));
    out.push(("500", "internal_error: a bug on the server's side"));
    out.push((
        "503",
        "service_unavailable: a dependency (database, Redis, storage) is down; try again after \
         Retry-After seconds",
    ));
    out
}

fn error_content() -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build()
}

fn header(description: &str, ty: Type) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(ty))
        .description(Some(description))
        .build()
}

/// Headers the error answers carry (`error.rs`): `WWW-Authenticate` on 401, `Retry-After` on 429
/// and 503.
fn add_headers(status: &str, response: &mut Response) {
    let (name, description, ty) = match status {
        "401" => (
            "WWW-Authenticate",
            "`Bearer`: the scheme to authenticate with",
            Type::String,
        ),
        "429" => (
            "Retry-After",
            "Seconds to wait before trying again",
            Type::Integer,
        ),
        "503" => (
            "Retry-After",
            "Seconds to wait before trying again",
            Type::Integer,
        ),
        _ => return,
    };
    response
        .headers
        .entry(name.to_owned())
        .or_insert_with(|| header(description, ty));
}

fn finish_operation(op: &mut Operation, path: &str) {
    for (status, description) in standard(op, path) {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content("application/json", error_content())
                        .build(),
                )
            });
    }
    for (status, response) in op.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        if status.starts_with('4') || status.starts_with('5') {
            // An error a route lists without a body still answers with the error body.
            if response.content.is_empty() {
                response
                    .content
                    .insert("application/json".to_owned(), error_content());
            }
            add_headers(status, response);
        }
    }
}

/// Replaces, inside each component schema, an inline copy of another component schema with a
/// `$ref` to it. utoipa inlines the type parameter of a generic (`Page<CourseCard>` holds a copy
/// of `CourseCard`), which would give generated clients one more type per list.
fn share_component_schemas(doc: &mut OpenApi) {
    use serde_json::Value;
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let named: Vec<(String, Value)> = components
        .schemas
        .iter()
        .filter_map(|(name, schema)| Some((name.clone(), serde_json::to_value(schema).ok()?)))
        .filter(|(_, v)| v.get("properties").is_some() || v.get("enum").is_some())
        .collect();
    fn walk(value: &mut Value, root: bool, own: &str, named: &[(String, Value)]) -> bool {
        if !root && let Some((name, _)) = named.iter().find(|(n, v)| n != own && v == value) {
            *value = serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
            return true;
        }
        let mut changed = false;
        match value {
            Value::Object(map) => {
                for (_, v) in map.iter_mut() {
                    changed |= walk(v, false, own, named);
                }
            }
            Value::Array(items) => {
                for v in items.iter_mut() {
                    changed |= walk(v, false, own, named);
                }
            }
            _ => {}
        }
        changed
    }
    for (name, schema) in components.schemas.iter_mut() {
        let Ok(mut value) = serde_json::to_value(&*schema) else {
            continue;
        };
        if walk(&mut value, true, name, &named)
            && let Ok(shared) = serde_json::from_value(value)
        {
            *schema = shared;
        }
    }
}

/// Adds the answers every route can give by construction (see the module's table), makes
/// operation ids unique (a duplicate gets its tag in front), and shares component schemas.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    share_component_schemas(&mut doc);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (path, item) in doc.paths.paths.iter_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        {
            finish_operation(op, path);
            if let Some(id) = &op.operation_id {
                let n = seen.entry(id.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    let tag = op
                        .tags
                        .as_ref()
                        .and_then(|t| t.first())
                        .cloned()
                        .unwrap_or_default();
                    op.operation_id = Some(format!("{tag}_{id}_{n}"));
                }
            }
        }
    }
    doc
}

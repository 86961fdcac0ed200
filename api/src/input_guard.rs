//! Every string a request carries (path, query parameters, JSON body, at any depth) is checked
//! once here against `lectern_core::text`: NUL and stray control characters get a 422 naming the
//! field before any handler runs, rather than a failed SQL statement (a 500) or a control
//! character smuggled into a log line, a mail header or another user's screen.

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes, BytesMut};
use futures::StreamExt;
use lectern_core::error::FieldErrors;
use lectern_core::text;
use serde_json::Value;

use crate::error::{ApiError, JSON_LIMIT};

pub async fn middleware(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut fields = FieldErrors::new();
    if let Some(c) = text::forbidden_char(&percent_decode(req.path())) {
        fields.add("path", text::problem(c));
    }
    // A query string that does not even parse is left to the query extractor's 400.
    if let Ok(pairs) = web::Query::<Vec<(String, String)>>::from_query(req.query_string()) {
        for (name, value) in pairs.iter() {
            match text::forbidden_char(name) {
                Some(c) => fields.add("query", text::problem(c)),
                None => {
                    if let Some(c) = text::forbidden_char(value) {
                        fields.add(name, text::problem(c));
                    }
                }
            }
        }
    }
    if is_json(&req) {
        // Read the body (within the JSON limit), check it, and hand the same bytes on to the
        // handler's extractor. A body that is not JSON at all is left to the extractor's 400.
        let mut payload = std::mem::replace(req.parts_mut().1, Payload::None);
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk: Bytes = chunk?;
            body.extend_from_slice(&chunk);
            if body.len() > JSON_LIMIT {
                return Err(ApiError::TooLarge(format!(
                    "the JSON body is larger than {JSON_LIMIT} bytes"
                ))
                .into());
            }
        }
        let body: Bytes = body.freeze();
        if let Ok(value) = serde_json::from_slice::<Value>(&body) {
            check_json(&value, "", &mut fields);
        }
        req.set_payload(Payload::from(body));
    }
    fields
        .into_result()
        .map_err(|e| actix_web::Error::from(ApiError::from(e)))?;
    next.call(req).await
}

fn is_json(req: &ServiceRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        })
        .unwrap_or(false)
}

/// Walks a JSON document; `at` is the dotted path of `value` (`sections[2].title`).
fn check_json(value: &Value, at: &str, fields: &mut FieldErrors) {
    let here = |at: &str| {
        if at.is_empty() {
            "body".to_owned()
        } else {
            at.to_owned()
        }
    };
    match value {
        Value::String(s) => {
            if let Some(c) = text::forbidden_char(s) {
                fields.add(&here(at), text::problem(c));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_json(item, &format!("{}[{i}]", here(at)), fields);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                if let Some(c) = text::forbidden_char(key) {
                    fields.add(&here(at), format!("has a key that {}", text::problem(c)));
                    continue;
                }
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                check_json(item, &path, fields);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `%XX` escapes decoded (invalid UTF-8 replaced), so `/courses/%00` is seen as the NUL it is.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_strings_are_named_by_their_path() {
        let mut fields = FieldErrors::new();
        let body = serde_json::json!({"title": "ok", "sections": [{"title": "a\u{0}b"}]});
        check_json(&body, "", &mut fields);
        assert_eq!(
            fields.0.keys().cloned().collect::<Vec<_>>(),
            ["sections[0].title"]
        );
        assert_eq!(percent_decode("/courses/%00x"), "/courses/\0x");
        assert_eq!(percent_decode("/a%2"), "/a%2");
    }
}

//! Request extractors whose rejections speak [`AppError`].

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::Json;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// The request's media type without parameters, lower-cased
/// (`Application/JSON; charset=utf-8` -> `application/json`); empty when the
/// request has no readable `Content-Type`.
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// `Json<T>` whose failures become 400 (syntax), 413 (too large), 415 (no
/// JSON content type) or 422 (wrong shape) in the API's error format.
#[derive(Debug, Clone)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// The payload of a stream send: `{"data": ...}`, or the older
/// `{"message": ...}`.
pub fn payload_of(body: serde_json::Value) -> Result<serde_json::Value, AppError> {
    match body {
        serde_json::Value::Object(mut fields) => {
            fields.remove("data").or_else(|| fields.remove("message")).ok_or_else(|| {
                AppError::Unprocessable("expected {\"data\": <any JSON>} (or {\"message\": <any JSON>})".into())
            })
        }
        _ => Err(AppError::Unprocessable("expected a JSON object {\"data\": <any JSON>}".into())),
    }
}

/// Whether the request's `Content-Type` is JSON exactly as axum's `Json`
/// reads it (a well-formed `application/json` or `application/*+json`), so
/// a send accepts the types every other JSON route does.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == "application" && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
        })
}

/// A stream send's request: its payload, and its headers (taken from the
/// request, not cloned as a `HeaderMap` extractor would).
///
/// The payload is JSON `{"data": any}` (or `{"message": any}`), or an HTML
/// form (`application/x-www-form-urlencoded`) with a `data` or `message`
/// field, as the seed's clients post it; a form field's text becomes a JSON
/// string.
#[derive(Debug, Clone)]
pub struct SendPayload {
    pub data: serde_json::Value,
    pub headers: HeaderMap,
}

impl<S: Send + Sync> FromRequest<S> for SendPayload {
    type Rejection = AppError;

    async fn from_request(mut req: Request, state: &S) -> Result<Self, AppError> {
        // Reading the body needs none of them (the declared length was
        // checked by the body-limit layer before any extractor ran).
        let headers = std::mem::take(req.headers_mut());
        if is_json(&headers) {
            let body = Bytes::from_request(req, state).await?;
            let value = match serde_json::from_slice(&body) {
                Ok(value) => value,
                // Parsed again only to word the error as every other route
                // does (axum's, with the path of a shape error); a send's
                // body is read once, without tracking the path.
                Err(_) => Json::<serde_json::Value>::from_bytes(&body).map(|Json(value)| value)?,
            };
            return payload_of(value).map(|data| Self { data, headers });
        }
        if media_type(&headers) != "application/x-www-form-urlencoded" {
            // Neither JSON nor a URL-encoded form (text, multipart, none):
            // the hint names both bodies this route takes.
            return Err(AppError::UnsupportedMediaType(
                "send {\"data\": ...} as application/json, or the form field data=... (or message=...) as \
                 application/x-www-form-urlencoded"
                    .into(),
            ));
        }
        let body = Bytes::from_request(req, state).await?;
        let fields = form_fields(&body)?;
        let field = |name: &str| fields.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
        field("data")
            .or_else(|| field("message"))
            .map(|text| Self { data: serde_json::Value::String(text), headers })
            .ok_or_else(|| AppError::Unprocessable("expected a form field data (or message)".into()))
    }
}

/// The fields of a URL-encoded form body, refused (400) when a name or
/// value is not UTF-8 once percent-decoded: decoding them lossily, as
/// `serde_urlencoded` does, would publish U+FFFD in place of the client's
/// bytes, where the same bytes in JSON are refused.
///
/// A body that starts with `{` or `[` is JSON labelled a form (curl's `-d`
/// without `-H` sends that): 415, naming the type to send it with, rather
/// than an "unknown field" for the whole JSON text.
pub fn form_fields(body: &[u8]) -> Result<Vec<(String, String)>, AppError> {
    let trimmed = body.trim_ascii_start();
    if trimmed.starts_with(b"{") || trimmed.starts_with(b"[") {
        return Err(AppError::UnsupportedMediaType(
            "the body looks like JSON but is labelled a form: send it with Content-Type: application/json".into(),
        ));
    }
    let not_utf8 = body
        .split(|b| *b == b'&')
        .flat_map(|pair| pair.splitn(2, |b| *b == b'='))
        .any(|part| percent_encoding::percent_decode(part).decode_utf8().is_err());
    if not_utf8 {
        return Err(AppError::MalformedJson("malformed form body: a field is not UTF-8 once percent-decoded".into()));
    }
    serde_urlencoded::from_bytes(body).map_err(|err| AppError::MalformedJson(format!("malformed form body: {err}")))
}

/// The `{id}` of a stream route. A segment that cannot be decoded (say,
/// percent-encoded bytes that are not UTF-8) names no stream: 404 in the
/// API's error format rather than axum's plain-text 400.
#[derive(Debug, Clone)]
pub struct StreamPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for StreamPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(_) => {
                let raw = parts.uri.path().split('/').nth(2).unwrap_or_default();
                Err(AppError::UnknownStream(String::from_utf8_lossy(raw.as_bytes()).into_owned()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn payload_forms() {
        assert_eq!(payload_of(json!({"data": {"x": 1}})).unwrap(), json!({"x": 1}));
        assert_eq!(payload_of(json!({"message": "hi"})).unwrap(), json!("hi"));
        assert_eq!(payload_of(json!({"data": null})).unwrap(), Value::Null);
        assert_eq!(payload_of(json!({"other": 1})).unwrap_err().status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(payload_of(json!([1])).unwrap_err().status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[tokio::test]
    async fn a_send_body_is_json_under_any_json_media_type() {
        for content_type in ["application/json", "application/json; charset=utf-8", "application/cloudevents+json"] {
            let request = Request::builder()
                .method("POST")
                .uri("/stream/s/send")
                .header("content-type", content_type)
                .header("traceparent", "t")
                .body(axum::body::Body::from(r#"{"data": {"n": 1}}"#))
                .unwrap();
            let sent = SendPayload::from_request(request, &()).await.unwrap();
            assert_eq!(sent.data, serde_json::json!({"n": 1}), "{content_type}");
            assert_eq!(sent.headers["traceparent"], "t", "the request's headers come along");
        }
        for (body, status) in [("{oops", StatusCode::BAD_REQUEST), ("[1]", StatusCode::UNPROCESSABLE_ENTITY)] {
            let request = Request::builder()
                .method("POST")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .unwrap();
            let error = SendPayload::from_request(request, &()).await.unwrap_err();
            assert_eq!(error.status(), status, "{body}");
        }
        let typed = |content_type: &str| {
            HeaderMap::from_iter([(axum::http::header::CONTENT_TYPE, content_type.parse().unwrap())])
        };
        for json in ["application/problem+json", "Application/JSON", "application/json;", "application/vnd.x+json"] {
            assert!(is_json(&typed(json)), "{json}");
        }
        // Refused by axum's Json too (malformed parameters, other types).
        for other in [
            "text/json",
            "application/jsonx",
            "application/json;charset",
            "application/a b+json",
            "application/x/+json",
        ] {
            assert!(!is_json(&typed(other)), "{other}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn a_send_body_of_another_type_is_told_both_it_may_be() {
        for content_type in [Some("multipart/form-data; boundary=x"), Some("text/plain"), None] {
            let mut request = Request::builder().method("POST").uri("/stream/s/send");
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let request = request.body(axum::body::Body::from("--x\r\n")).unwrap();
            match SendPayload::from_request(request, &()).await {
                Err(AppError::UnsupportedMediaType(detail)) => {
                    assert!(detail.contains("application/json"), "{detail}");
                    assert!(detail.contains("application/x-www-form-urlencoded"), "{detail}");
                }
                other => panic!("{content_type:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn form_fields_are_utf8_or_refused() {
        let fields = form_fields(b"data=caf%C3%A9+au+lait&message=%E2%9C%93").unwrap();
        assert_eq!(fields, [("data".into(), "café au lait".into()), ("message".into(), "✓".into())]);
        for bad in [&b"data=ok%FF%FEend"[..], b"data=%C3", b"d%FFta=1", b"data=\xff"] {
            let error = form_fields(bad).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{:?}", String::from_utf8_lossy(bad));
        }
        // JSON under a form's type, as curl -d sends it without -H.
        for json in [&br#"{"stream_id": "x"}"#[..], b"  [1]"] {
            let error = form_fields(json).unwrap_err();
            assert_eq!(error.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{:?}", String::from_utf8_lossy(json));
        }
    }
}

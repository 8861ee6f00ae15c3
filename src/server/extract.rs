//! Request bodies: JSON into a wire type with OpenAI errors (400 naming the bad field, 413 over
//! the size limit) instead of axum's plain-text rejections and 422s.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::state::AppState;
use super::wire::SamplingFields;

pub struct OpenAiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for OpenAiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        // The content type is not checked: some clients send JSON without one.
        let limit = state.config.body_read_timeout;
        let bytes = tokio::time::timeout(limit, Bytes::from_request(req, state))
            .await
            .map_err(|_| ApiError::BodyTimeout(limit.as_secs()))?
            .map_err(|rej| match rej {
                BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                    ApiError::PayloadTooLarge(state.config.max_request_bytes)
                }
                other => ApiError::MalformedBody {
                    message: format!("Could not read the request body: {other}"),
                    param: None,
                },
            })?;
        parse(&bytes).map(OpenAiJson)
    }
}

/// Parses `bytes` as `T`; unknown fields are ignored (serde's default), a wrong type or value
/// names its field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let e = match serde_path_to_error::deserialize(de) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    // JSON has one number type: `176.0` is the integer 176 (JSON Schema says so too), which
    // serde refuses for an integer field. Retry with integral floats written as integers.
    if e.inner().is_data() {
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(bytes) {
            if integral_floats_to_ints(&mut v) {
                if let Ok(t) = serde_json::from_value(v) {
                    return Ok(t);
                }
            }
        }
    }
    Err(e).map_err(|e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::MalformedBody {
                message: format!("The request body is not valid JSON: {inner}"),
                param: None,
            };
        }
        if path == "." {
            // serde loses the path inside `#[serde(flatten)]`: the shared sampling fields are
            // the flattened ones, so parse them alone to name the culprit.
            let de = &mut serde_json::Deserializer::from_slice(bytes);
            if let Err(e) = serde_path_to_error::deserialize::<_, SamplingFields>(de) {
                if e.path().to_string() != "." {
                    return field_error(e.path().to_string(), e.into_inner());
                }
            }
            // A missing required field is reported at the top level too.
            let missing = inner
                .to_string()
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_string);
            return ApiError::MalformedBody {
                message: format!("Invalid request: {inner}"),
                param: missing,
            };
        }
        field_error(path, inner)
    })
}

/// Rewrites every float with no fractional part (within i64) as an integer; true if any was.
fn integral_floats_to_ints(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().expect("f64");
            // 2^63 is exclusive: i64::MAX as f64 rounds up to it.
            if f.fract() == 0.0 && (-9.223372036854776e18..9.223372036854776e18).contains(&f) {
                *v = Value::from(f as i64);
                true
            } else {
                false
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |any, x| integral_floats_to_ints(x) | any),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |any, x| integral_floats_to_ints(x) | any),
        _ => false,
    }
}

fn field_error(path: String, err: serde_json::Error) -> ApiError {
    ApiError::MalformedBody {
        message: format!("Invalid value for `{path}`: {err}"),
        param: Some(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::wire::ChatCompletionRequest;

    #[test]
    fn unknown_fields_are_ignored_and_bad_types_name_the_field() {
        let r: ChatCompletionRequest = parse(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[],"foo":{"bar":1},"temperature":null}"#,
        )
        .unwrap();
        assert_eq!(r.messages.len(), 1);
        let e = parse::<ChatCompletionRequest>(
            br#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("temperature"), "{e}");
        let e = parse::<ChatCompletionRequest>(br#"{"messages":"hi"}"#).unwrap_err();
        assert!(e.to_string().contains("messages"), "{e}");
        let e = parse::<ChatCompletionRequest>(b"{not json").unwrap_err();
        assert!(
            matches!(e, ApiError::MalformedBody { param: None, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn integral_floats_are_integers_and_fractions_are_not() {
        let r: ChatCompletionRequest = parse(
            br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":16.0,"n":1e0,"temperature":0.5}"#,
        )
        .unwrap();
        assert_eq!((r.sampling.max_tokens, r.sampling.n), (Some(16), Some(1)));
        let e = parse::<ChatCompletionRequest>(
            br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":16.5}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_tokens"), "{e}");
    }
}

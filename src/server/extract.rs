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
        let bytes = Bytes::from_request(req, state)
            .await
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
    serde_path_to_error::deserialize(de).map_err(|e| {
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
}

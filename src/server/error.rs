//! ApiError: every way a request can fail, mapped to an HTTP status and OpenAI's error object
//! here and nowhere else (as TGI's InferError).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::limits::Limited;
use super::wire::{ErrorBody, ErrorResponse};
use crate::scheduler::error::SchedulerError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// A field has a value we cannot use.
    #[error("{message}")]
    InvalidParam {
        message: String,
        param: Option<String>,
    },
    /// The body is not JSON, or a field has the wrong type.
    #[error("{message}")]
    MalformedBody {
        message: String,
        param: Option<String>,
    },
    #[error("{}", context_length_message(*.max_model_len, *.prompt_tokens, *.completion_tokens))]
    ContextLength {
        max_model_len: usize,
        prompt_tokens: usize,
        /// None: no max_tokens was asked for; the prompt alone does not fit.
        completion_tokens: Option<usize>,
    },
    #[error("Incorrect API key provided.")]
    Unauthorized,
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    /// A stored object (a response id) that is not there.
    #[error("{message}")]
    NotFound {
        message: String,
        param: Option<String>,
    },
    #[error("No route for {0}.")]
    RouteNotFound(String),
    #[error("Method {0} is not allowed here.")]
    MethodNotAllowed(String),
    #[error("The request body is larger than the server's limit of {0} bytes.")]
    PayloadTooLarge(usize),
    #[error("The request body did not arrive within {0} seconds.")]
    BodyTimeout(u64),
    #[error("The server is at capacity ({0} requests in flight or queued); retry later.")]
    QueueFull(usize),
    /// Over one of the API key's limits (429 with `x-ratelimit-*` headers).
    #[error("{}", .0.message)]
    RateLimited(Box<Limited>),
    #[error("The model is still loading.")]
    NotReady,
    /// The engine thread has stopped (shutdown, or it died).
    #[error("The engine is not accepting requests (shutting down or stopped).")]
    Unavailable,
    /// The engine failed while running the request (a bug or a device error, not bad input).
    #[error("Engine error: {0}")]
    Engine(String),
}

fn context_length_message(max: usize, prompt: usize, completion: Option<usize>) -> String {
    match completion {
        Some(c) => format!(
            "This model's maximum context length is {max} tokens. However, you requested {} \
             tokens ({prompt} in the messages, {c} in the completion). Please reduce the length \
             of the messages or completion.",
            prompt + c
        ),
        None => format!(
            "This model's maximum context length is {max} tokens. However, your messages \
             resulted in {prompt} tokens. Please reduce the length of the messages."
        ),
    }
}

impl ApiError {
    pub fn rate_limited(l: Limited) -> Self {
        ApiError::RateLimited(Box::new(l))
    }

    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidParam {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    /// Why `EngineHandle::add` refused a request: the scheduler's admission errors are the
    /// client's fault (400); anything else means the engine is gone.
    pub fn from_engine_add(err: anyhow::Error) -> Self {
        match err.downcast_ref::<SchedulerError>() {
            Some(SchedulerError::PromptTooLong {
                len, max_model_len, ..
            }) => ApiError::ContextLength {
                max_model_len: *max_model_len,
                prompt_tokens: *len,
                completion_tokens: None,
            },
            Some(SchedulerError::EmptyPrompt(_)) => {
                ApiError::invalid("prompt", "The prompt is empty.")
            }
            Some(SchedulerError::ZeroMaxTokens(_)) => {
                ApiError::invalid("max_tokens", "max_tokens must be at least 1.")
            }
            Some(other) => ApiError::InvalidParam {
                message: other.to_string(),
                param: None,
            },
            // The only other failure of `add` is a closed channel: the engine thread is gone.
            None => {
                tracing::warn!("engine refused a request: {err:#}");
                ApiError::Unavailable
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidParam { .. }
            | ApiError::MalformedBody { .. }
            | ApiError::ContextLength { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::QueueFull(_) | ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotReady | ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type`, `param` and `code` for this error.
    fn parts(&self) -> (&'static str, Option<String>, Option<&'static str>) {
        match self {
            ApiError::InvalidParam { param, .. } => (
                "invalid_request_error",
                param.clone(),
                Some("invalid_value"),
            ),
            ApiError::MalformedBody { param, .. } => {
                ("invalid_request_error", param.clone(), Some("invalid_json"))
            }
            ApiError::ContextLength { .. } => (
                "invalid_request_error",
                Some("messages".into()),
                Some("context_length_exceeded"),
            ),
            ApiError::Unauthorized => ("invalid_request_error", None, Some("invalid_api_key")),
            ApiError::ModelNotFound(_) => (
                "invalid_request_error",
                Some("model".into()),
                Some("model_not_found"),
            ),
            ApiError::RouteNotFound(_) => ("invalid_request_error", None, Some("not_found")),
            ApiError::NotFound { param, .. } => {
                ("invalid_request_error", param.clone(), Some("not_found"))
            }
            ApiError::MethodNotAllowed(_) => {
                ("invalid_request_error", None, Some("method_not_allowed"))
            }
            ApiError::PayloadTooLarge(_) => {
                ("invalid_request_error", None, Some("request_too_large"))
            }
            ApiError::BodyTimeout(_) => ("invalid_request_error", None, Some("request_timeout")),
            ApiError::QueueFull(_) => ("rate_limit_error", None, Some("rate_limit_exceeded")),
            ApiError::RateLimited(l) => {
                let (kind, code) = l.kind_and_code();
                (kind, None, Some(code))
            }
            ApiError::NotReady => ("server_error", None, Some("model_not_ready")),
            ApiError::Unavailable => ("server_error", None, Some("engine_unavailable")),
            ApiError::Engine(_) => ("server_error", None, Some("engine_error")),
        }
    }

    pub fn body(&self) -> ErrorResponse {
        let (kind, param, code) = self.parts();
        ErrorResponse {
            error: ErrorBody {
                message: self.to_string(),
                kind: kind.to_string(),
                param,
                code: code.map(str::to_string),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(%status, "{self}");
        } else {
            tracing::debug!(%status, "{self}");
        }
        let mut resp = (status, Json(self.body())).into_response();
        match &self {
            ApiError::RateLimited(l) => l.headers(resp.headers_mut()),
            // Capacity frees as requests finish; a second is a fair first back-off.
            ApiError::QueueFull(_) => {
                resp.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                );
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_length_message_names_both_numbers() {
        let e = ApiError::ContextLength {
            max_model_len: 2048,
            prompt_tokens: 2000,
            completion_tokens: Some(100),
        };
        let m = e.to_string();
        assert!(
            m.contains("2048") && m.contains("2100") && m.contains("2000"),
            "{m}"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body().error.code.as_deref(),
            Some("context_length_exceeded")
        );
    }

    #[test]
    fn scheduler_errors_are_client_errors() {
        let e = ApiError::from_engine_add(
            SchedulerError::PromptTooLong {
                id: 1,
                len: 9,
                max_model_len: 8,
            }
            .into(),
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains('9') && e.to_string().contains('8'));
        let e = ApiError::from_engine_add(anyhow::anyhow!("engine is not running"));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

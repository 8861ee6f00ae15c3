//! Server-sent events: JSON payloads as `data:` lines, errors as OpenAI error objects, then
//! `data: [DONE]` as OpenAI ends every stream.

use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;

use super::error::ApiError;

pub type SseItem = Result<Event, Infallible>;

pub fn json<T: Serialize>(value: &T) -> SseItem {
    let data = serde_json::to_string(value).expect("wire types serialize");
    Ok(Event::default().data(data))
}

/// An error after the stream started (status 200 already sent): vLLM's and OpenAI's way is an
/// error object as a data line.
pub fn error(err: &ApiError) -> SseItem {
    tracing::warn!("stream ended by an error: {err}");
    json(&err.body())
}

pub fn done() -> SseItem {
    Ok(Event::default().data("[DONE]"))
}

pub fn response<S>(events: S) -> Response
where
    S: Stream<Item = SseItem> + Send + 'static,
{
    // Proxies such as nginx buffer responses unless told not to.
    ([("x-accel-buffering", "no")], Sse::new(events)).into_response()
}

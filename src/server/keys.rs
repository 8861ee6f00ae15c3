//! The API key file (`--api-keys FILE`): one TOML entry per key with an id, its secret and
//! optional limits. Parsed strictly: an unknown field or a bad value is a load error naming it.
//!
//! ```toml
//! [[keys]]
//! id = "team-a"                  # shown on /metrics; never the secret
//! key = "sk-team-a-secret"
//! max_concurrent_requests = 8
//! requests_per_minute = 600
//! tokens_per_minute = 100000
//! daily_token_budget = 5000000
//! max_tokens = 1024
//! max_tokens_mode = "clamp"       # or "reject": a larger max_tokens gets a 400
//! priority = 0                    # under --scheduling-policy priority; lower runs first
//! ```

use std::path::Path;

use serde::Deserialize;

/// Range of a key's `priority`; see [`crate::server::limits::effective_priority`].
pub const KEY_PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -32767..=32767;

/// What happens to a request whose `max_tokens` is above the key's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaxTokensMode {
    /// Lowered to the cap.
    #[default]
    Clamp,
    /// Refused with a 400 naming `max_tokens`.
    Reject,
}

/// One key's limits; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyLimits {
    pub max_concurrent_requests: Option<u64>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    /// Tokens per UTC day.
    pub daily_token_budget: Option<u64>,
    /// Cap on a request's `max_tokens` (per choice); also lowers the default.
    pub max_tokens: Option<u64>,
    pub max_tokens_mode: MaxTokensMode,
    /// Scheduling priority under the priority policy: lower values are served first.
    pub priority: i32,
}

/// One entry of the key file.
#[derive(Clone, PartialEq)]
pub struct ApiKey {
    /// Names the key on /metrics and in logs.
    pub id: String,
    /// The secret clients send as `Authorization: Bearer <key>`.
    pub key: String,
    pub limits: KeyLimits,
}

/// An entry as written (serde cannot combine `flatten` with `deny_unknown_fields`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    key: String,
    max_concurrent_requests: Option<u64>,
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
    daily_token_budget: Option<u64>,
    max_tokens: Option<u64>,
    #[serde(default)]
    max_tokens_mode: MaxTokensMode,
    #[serde(default)]
    priority: i32,
}

impl From<KeyEntry> for ApiKey {
    fn from(e: KeyEntry) -> Self {
        ApiKey {
            id: e.id,
            key: e.key,
            limits: KeyLimits {
                max_concurrent_requests: e.max_concurrent_requests,
                requests_per_minute: e.requests_per_minute,
                tokens_per_minute: e.tokens_per_minute,
                daily_token_budget: e.daily_token_budget,
                max_tokens: e.max_tokens,
                max_tokens_mode: e.max_tokens_mode,
                priority: e.priority,
            },
        }
    }
}

impl std::fmt::Debug for ApiKey {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Id of the key given with `--api-key` (no limits).
pub const SINGLE_KEY_ID: &str = "default";

/// Reads and checks a key file.
pub fn load(path: &Path) -> Result<Vec<ApiKey>, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        KeyFileError::Parse { message, .. } => KeyFileError::Parse {
            path: path.display().to_string(),
            message,
        },
        KeyFileError::Invalid { message, .. } => KeyFileError::Invalid {
            path: path.display().to_string(),
            message,
        },
        other => other,
    })
}

/// Parses key file text (the path in errors is left empty).
pub fn parse(text: &str) -> Result<Vec<ApiKey>, KeyFileError> {
    let file: KeyFile = toml::from_str(text).map_err(|e| KeyFileError::Parse {
        path: String::new(),
        message: e.to_string(),
    })?;
    let keys: Vec<ApiKey> = file.keys.into_iter().map(ApiKey::from).collect();
    validate(&keys).map_err(|message| KeyFileError::Invalid {
        path: String::new(),
        message,
    })?;
    Ok(keys)
}

/// Ids unique and label-safe, secrets unique and non-empty, limits positive.
pub fn validate(keys: &[ApiKey]) -> Result<(), String> {
    if keys.is_empty() {
        return Err("no keys: at least one [[keys]] entry is needed".into());
    }
    for (i, k) in keys.iter().enumerate() {
        let valid_id = !k.id.is_empty()
            && k.id.len() <= 64
            && k.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_id {
            return Err(format!(
                "key {i}: `id` must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'; got {:?}",
                k.id
            ));
        }
        if k.key.trim().is_empty() || k.key.trim() != k.key {
            return Err(format!(
                "key `{}`: `key` must be non-empty, without surrounding spaces",
                k.id
            ));
        }
        let l = &k.limits;
        for (name, v) in [
            ("max_concurrent_requests", l.max_concurrent_requests),
            ("requests_per_minute", l.requests_per_minute),
            ("tokens_per_minute", l.tokens_per_minute),
            ("daily_token_budget", l.daily_token_budget),
            ("max_tokens", l.max_tokens),
        ] {
            if v == Some(0) {
                return Err(format!(
                    "key `{}`: `{name}` must be at least 1 (leave it out for no limit)",
                    k.id
                ));
            }
        }
        if !KEY_PRIORITY_RANGE.contains(&l.priority) {
            return Err(format!(
                "key `{}`: `priority` must be in {KEY_PRIORITY_RANGE:?}; got {}",
                k.id, l.priority
            ));
        }
        for other in &keys[..i] {
            if other.id == k.id {
                return Err(format!("two keys have the id `{}`", k.id));
            }
            if other.key == k.key {
                return Err(format!(
                    "keys `{}` and `{}` have the same secret",
                    other.id, k.id
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits_and_defaults() {
        let keys = parse(
            r#"
            [[keys]]
            id = "a"
            key = "secret-a"
            tokens_per_minute = 100
            max_tokens = 16
            max_tokens_mode = "reject"
            priority = -1

            [[keys]]
            id = "b"
            key = "secret-b"
            "#,
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].limits.tokens_per_minute, Some(100));
        assert_eq!(keys[0].limits.max_tokens_mode, MaxTokensMode::Reject);
        assert_eq!(keys[0].limits.priority, -1);
        assert_eq!(keys[1].limits, KeyLimits::default());
        assert!(!format!("{:?}", keys[0]).contains("secret"));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for (text, needle) in [
            (
                "[[keys]]\nid='a'\nkey='k'\ntokens_per_mintue=5",
                "tokens_per_mintue",
            ),
            (
                "[[keys]]\nid='a'\nkey='k'\nrequests_per_minute=0",
                "requests_per_minute",
            ),
            ("[[keys]]\nid='a b'\nkey='k'", "id"),
            ("[[keys]]\nid='a'\nkey=''", "key"),
            (
                "[[keys]]\nid='a'\nkey='k'\n[[keys]]\nid='a'\nkey='j'",
                "id `a`",
            ),
            (
                "[[keys]]\nid='a'\nkey='k'\n[[keys]]\nid='b'\nkey='k'",
                "same secret",
            ),
            ("[[keys]]\nid='a'\nkey='k'\nmax_tokens_mode='cut'", "cut"),
            ("[[keys]]\nid='a'\nkey='k'\npriority=40000", "priority"),
            ("keys = []", "no keys"),
            ("[[keys]]\nid='a'\nkey='k'\nmax_tokens=-1", "max_tokens"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}

//! Reads the generation-relevant parts of a Hugging Face model directory's config files.

use std::path::Path;

use serde_json::Value;

use super::TokenizerError;

/// What `tokenizer_config.json`, `chat_template.jinja` and `generation_config.json` say about
/// special tokens and chat formatting.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct HfTokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub chat_template: Option<String>,
    pub add_bos_token: Option<bool>,
    pub generation_bos_token_id: Option<u32>,
    pub generation_eos_token_ids: Vec<u32>,
}

impl HfTokenizerConfig {
    /// Reads whichever of the config files exist in `dir`; a missing file contributes nothing.
    pub fn read(dir: &Path) -> Result<Self, TokenizerError> {
        let mut cfg = Self::default();
        if let Some(tc) = read_json(&dir.join("tokenizer_config.json"))? {
            cfg.bos_token = tc.get("bos_token").and_then(token_content);
            cfg.eos_token = tc.get("eos_token").and_then(token_content);
            cfg.chat_template = tc.get("chat_template").and_then(chat_template);
            cfg.add_bos_token = tc.get("add_bos_token").and_then(Value::as_bool);
        }
        // Newer repos keep the template in its own file, which wins over the JSON one.
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            cfg.chat_template =
                Some(
                    std::fs::read_to_string(&jinja).map_err(|source| TokenizerError::Io {
                        path: jinja.clone(),
                        source,
                    })?,
                );
        }
        if let Some(gc) = read_json(&dir.join("generation_config.json"))? {
            cfg.generation_bos_token_id = gc.get("bos_token_id").and_then(as_u32);
            cfg.generation_eos_token_ids = match gc.get("eos_token_id") {
                Some(Value::Array(ids)) => ids.iter().filter_map(as_u32).collect(),
                Some(v) => as_u32(v).into_iter().collect(),
                None => Vec::new(),
            };
        }
        Ok(cfg)
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        })
}

fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

/// A special token is written either as its text or as an AddedToken object with `content`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of named templates of which we want `default`.
fn chat_template(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_content_accepts_string_and_object() {
        assert_eq!(token_content(&json!("<s>")), Some("<s>".into()));
        assert_eq!(
            token_content(&json!({"content": "</s>", "lstrip": false})),
            Some("</s>".into())
        );
        assert_eq!(token_content(&Value::Null), None);
    }

    #[test]
    fn chat_template_picks_default_of_named_list() {
        let v =
            json!([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]);
        assert_eq!(chat_template(&v), Some("D".into()));
        assert_eq!(chat_template(&json!("X")), Some("X".into()));
    }

    #[test]
    fn reads_configs_and_eos_list() {
        let dir = std::env::temp_dir().join(format!("flare-hf-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": true,
                "chat_template": "json template"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("generation_config.json"),
            r#"{"bos_token_id": 1, "eos_token_id": [2, 7]}"#,
        )
        .unwrap();
        let cfg = HfTokenizerConfig::read(&dir).unwrap();
        assert_eq!(cfg.bos_token.as_deref(), Some("<s>"));
        assert_eq!(cfg.eos_token.as_deref(), Some("</s>"));
        assert_eq!(cfg.add_bos_token, Some(true));
        assert_eq!(cfg.chat_template.as_deref(), Some("json template"));
        assert_eq!(cfg.generation_bos_token_id, Some(1));
        assert_eq!(cfg.generation_eos_token_ids, vec![2, 7]);

        std::fs::write(dir.join("chat_template.jinja"), "file template").unwrap();
        std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": 3}"#).unwrap();
        let cfg = HfTokenizerConfig::read(&dir).unwrap();
        assert_eq!(cfg.chat_template.as_deref(), Some("file template"));
        assert_eq!(cfg.generation_eos_token_ids, vec![3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Grammar-constrained decoding with llguidance: grammars compiled from a request's
//! [`Constraint`] (off the engine thread, cached per grammar text, bounded in fuel and time) and
//! per-sequence [`GrammarMatcher`]s whose masks the runner applies before sampling.

mod gate;
mod matcher;
mod tokenv;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::{Matcher, ParserFactory, TokenParser};
use serde_json::{json, Value};

pub use matcher::GrammarMatcher;
pub use tokenv::{token_bytes, FlareTokEnv};

use crate::request::{Constraint, ReasoningMarkers};
use crate::tokenizer::Tokenizer;

/// Grammars kept compiled; past this the cache starts over (compiling again is correct, only
/// slower).
const CACHE_CAPACITY: usize = 512;

/// Why a constraint cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum GuidanceError {
    /// Structured outputs are off for this model (its tokenizer could not be mapped to bytes).
    #[error("structured outputs are not available for this model: {0}")]
    Unavailable(String),
    /// llguidance refused the schema, regex or grammar.
    #[error("{0}")]
    Invalid(String),
    /// Compilation ran past the time limit.
    #[error("compiling the grammar took longer than {0:?}")]
    Timeout(Duration),
}

/// The grammar compiler of one model: its token environment, llguidance's parser factory and a
/// cache of compiled grammars. Shared by the server (compiles ahead) and the runner (makes
/// matchers from the cache).
pub struct Guidance {
    factory: ParserFactory,
    cache: Mutex<HashMap<String, TokenParser>>,
    compile_timeout: Duration,
}

impl std::fmt::Debug for Guidance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guidance")
            .field("vocab_size", &self.vocab_size())
            .finish_non_exhaustive()
    }
}

impl Guidance {
    /// Default wall-clock limit on compiling one grammar.
    pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(10);

    /// `vocab_size`: the width of the model's logits rows (may exceed the tokenizer's).
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        vocab_size: usize,
        eos_token_ids: &[u32],
    ) -> Result<Self, GuidanceError> {
        let env = FlareTokEnv::new(tokenizer, vocab_size, eos_token_ids)?.into_env();
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| GuidanceError::Unavailable(format!("llguidance: {e}")))?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits {
            // Fuel bounds the work of compiling and of each mask, whatever the wall clock.
            initial_lexer_fuel: 2_000_000,
            ..ParserLimits::default()
        };
        Ok(Self {
            factory,
            cache: Mutex::new(HashMap::new()),
            compile_timeout: Self::DEFAULT_COMPILE_TIMEOUT,
        })
    }

    pub fn with_compile_timeout(mut self, t: Duration) -> Self {
        self.compile_timeout = t;
        self
    }

    pub fn compile_timeout(&self) -> Duration {
        self.compile_timeout
    }

    pub fn vocab_size(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }

    /// Compiles `c` into the cache unless it is there (blocking: call from a worker thread).
    pub fn compile(&self, c: &Constraint) -> Result<(), GuidanceError> {
        self.parser(c).map(|_| ())
    }

    /// As [`Guidance::compile`] on a thread of its own, waiting at most the time limit. On a
    /// timeout that thread finishes in the background (its fuel limit bounds it; the result
    /// still lands in the cache) and the caller gets the error.
    pub fn compile_within_limit(self: &Arc<Self>, c: &Constraint) -> Result<(), GuidanceError> {
        if self.cached(&grammar_key(c)) {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let this = self.clone();
        let c = c.clone();
        std::thread::Builder::new()
            .name("flare-grammar".into())
            .spawn(move || {
                let _ = tx.send(this.compile(&c));
            })
            .map_err(|e| GuidanceError::Invalid(format!("starting the grammar compiler: {e}")))?;
        match rx.recv_timeout(self.compile_timeout) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(GuidanceError::Timeout(self.compile_timeout))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(GuidanceError::Invalid("the grammar compiler failed".into()))
            }
        }
    }

    /// A fresh matcher for `c` at the start of the output (compiles on a cache miss).
    pub fn matcher(&self, c: &Constraint) -> Result<GrammarMatcher, GuidanceError> {
        self.matcher_after(c, None)
    }

    /// As [`Guidance::matcher`]; with `reasoning`, the grammar binds only the answer after the
    /// model's reasoning.
    pub fn matcher_after(
        &self,
        c: &Constraint,
        reasoning: Option<&ReasoningMarkers>,
    ) -> Result<GrammarMatcher, GuidanceError> {
        let parser = self.parser(c)?;
        let gate = reasoning.map(|m| gate::Gate::new(self.factory.tok_env().clone(), m));
        Ok(GrammarMatcher::new(Matcher::new(Ok(parser)), gate))
    }

    fn cached(&self, key: &str) -> bool {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }

    /// A parser for `c` in its initial state, from the cache or compiled now.
    fn parser(&self, c: &Constraint) -> Result<TokenParser, GuidanceError> {
        let key = grammar_key(c);
        if let Some(p) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(p.deep_clone());
        }
        let grammar = top_level_grammar(c)?;
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| GuidanceError::Invalid(e.to_string()))?;
        // The first mask is where a grammar too large for the lexer's limits fails: find out now,
        // so that it is a refusal, not a request that ends after its first token.
        Matcher::new(Ok(parser.deep_clone()))
            .compute_mask()
            .map_err(|e| GuidanceError::Invalid(e.to_string()))?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        let fresh = parser.deep_clone();
        cache.insert(key, parser);
        Ok(fresh)
    }
}

/// The cache key: the constraint's kind and its canonical text.
pub fn grammar_key(c: &Constraint) -> String {
    match c {
        Constraint::JsonSchema(v) => format!("json:{v}"),
        Constraint::JsonObject => "json_object".into(),
        Constraint::Regex(r) => format!("regex:{r}"),
        Constraint::Choice(v) => format!("choice:{}", json!(v)),
        Constraint::Lark(g) => format!("lark:{g}"),
    }
}

/// JSON without free whitespace: `{"a": 1, "b": [2, 3]}`. llguidance's default lets the model
/// put any whitespace between tokens, and small models then emit newlines until `max_tokens`.
/// A schema that sets its own `x-guidance` options keeps them.
fn with_json_layout(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| {
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

fn top_level_grammar(c: &Constraint) -> Result<TopLevelGrammar, GuidanceError> {
    Ok(match c {
        Constraint::JsonSchema(v) => {
            if !v.is_object() && !v.is_boolean() {
                return Err(GuidanceError::Invalid(
                    "a JSON schema must be an object".into(),
                ));
            }
            TopLevelGrammar::from_json_schema(with_json_layout(v.clone()))
        }
        Constraint::JsonObject => {
            TopLevelGrammar::from_json_schema(with_json_layout(json!({"type": "object"})))
        }
        Constraint::Regex(r) => TopLevelGrammar::from_regex(r),
        Constraint::Choice(options) => {
            if options.is_empty() {
                return Err(GuidanceError::Invalid("`choice` must not be empty".into()));
            }
            // Lark string literals are JSON strings, so JSON quoting escapes any text.
            let alts: Vec<String> = options.iter().map(|o| json!(o).to_string()).collect();
            TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
        }
        Constraint::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
    })
}

#[cfg(test)]
mod tests;

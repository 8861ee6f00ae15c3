//! Benchmark prompts: random token prompts of set lengths, or ShareGPT-style JSON/JSONL files;
//! sampled with a seed so two runs (and two servers) see the same requests.

use std::collections::HashSet;
use std::path::Path;

use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde_json::Value;

use super::error::{BenchError, Result};
use crate::tokenizer::Tokenizer;

/// vLLM's ShareGPT filter: prompts and completions shorter than this are dropped...
const MIN_SEQ_LEN: usize = 4;
/// ...and so are prompts longer than this, or pairs longer than `MAX_TOTAL_LEN` together.
const MAX_PROMPT_LEN: usize = 1024;
const MAX_TOTAL_LEN: usize = 2048;
/// Rounds of decode -> re-encode -> fix when making a random prompt of an exact length.
const MAX_LENGTH_FIX_ROUNDS: usize = 10;

/// What the benchmarks need of a tokenizer; a trait so tests can use a toy one.
pub trait TextTokenizer: Send + Sync {
    /// Ids of `text`, without BOS or other special tokens (the server adds its own).
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Ids a random prompt may use: the vocabulary without special and added tokens.
    fn plain_token_ids(&self) -> Vec<u32>;
}

impl TextTokenizer for Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(Tokenizer::encode(self, text, false)?)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(Tokenizer::decode(self, ids, false)?)
    }

    fn plain_token_ids(&self) -> Vec<u32> {
        let added: HashSet<u32> = self
            .inner()
            .get_added_tokens_decoder()
            .keys()
            .copied()
            .collect();
        (0..self.vocab_size() as u32)
            .filter(|id| !added.contains(id))
            .collect()
    }
}

/// One benchmark request: the prompt as text (for HTTP) and as ids (in-process, and its length).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRequest {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    /// `max_tokens` to ask for.
    pub expected_output_len: usize,
}

impl SampleRequest {
    pub fn prompt_len(&self) -> usize {
        self.prompt_ids.len()
    }
}

/// Random prompts: lengths uniform in `len * (1 ± range_ratio)` (vLLM's `--random-range-ratio`).
#[derive(Debug, Clone, PartialEq)]
pub struct RandomSpec {
    pub num_prompts: usize,
    pub input_len: usize,
    pub output_len: usize,
    pub range_ratio: f64,
    pub seed: u64,
}

fn length_range(len: usize, ratio: f64) -> (usize, usize) {
    let lo = (len as f64 * (1.0 - ratio)).floor() as usize;
    let hi = (len as f64 * (1.0 + ratio)).ceil() as usize;
    (lo.max(1), hi.max(lo.max(1)))
}

pub fn random_requests(tok: &dyn TextTokenizer, spec: &RandomSpec) -> Result<Vec<SampleRequest>> {
    if !(0.0..1.0).contains(&spec.range_ratio) {
        return Err(BenchError::Config(format!(
            "random range ratio must be in [0, 1), got {}",
            spec.range_ratio
        )));
    }
    if spec.input_len == 0 || spec.output_len == 0 {
        return Err(BenchError::Config(
            "random input and output lengths must be at least 1".into(),
        ));
    }
    let plain = tok.plain_token_ids();
    if plain.is_empty() {
        return Err(BenchError::Config(
            "the tokenizer has no plain tokens".into(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let (in_lo, in_hi) = length_range(spec.input_len, spec.range_ratio);
    let (out_lo, out_hi) = length_range(spec.output_len, spec.range_ratio);
    (0..spec.num_prompts)
        .map(|_| {
            let input_len = rng.random_range(in_lo..=in_hi);
            let output_len = rng.random_range(out_lo..=out_hi);
            let (prompt, prompt_ids) = prompt_of_len(tok, input_len, &plain, &mut rng)?;
            Ok(SampleRequest {
                prompt,
                prompt_ids,
                expected_output_len: output_len,
            })
        })
        .collect()
}

/// Random ids decode to text that may re-encode to a different count (merges across token
/// boundaries), and the server only sees text; so decode, re-encode and cut or extend until the
/// text itself is `len` tokens (close to it if that does not converge).
fn prompt_of_len(
    tok: &dyn TextTokenizer,
    len: usize,
    plain: &[u32],
    rng: &mut StdRng,
) -> Result<(String, Vec<u32>)> {
    let mut ids: Vec<u32> = (0..len)
        .map(|_| plain[rng.random_range(0..plain.len())])
        .collect();
    let mut text = tok.decode(&ids)?;
    for _ in 0..MAX_LENGTH_FIX_ROUNDS {
        let actual = tok.encode(&text)?;
        if actual.len() == len {
            return Ok((text, actual));
        }
        ids = actual;
        if ids.len() > len {
            ids.truncate(len);
        } else {
            ids.extend((ids.len()..len).map(|_| plain[rng.random_range(0..plain.len())]));
        }
        text = tok.decode(&ids)?;
    }
    let actual = tok.encode(&text)?;
    Ok((text, actual))
}

/// A prompt file: ShareGPT (`conversations: [{from, value}, ...]`, first turn the prompt,
/// second the reference completion) or simple records (`prompt`, optional `completion` or
/// `output_len`), as a JSON array or JSON lines.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSpec {
    pub num_prompts: usize,
    /// Fixed `max_tokens` for every request; None: the reference completion's length.
    pub output_len: Option<usize>,
    pub seed: u64,
}

struct Entry {
    prompt: String,
    completion: Option<String>,
    output_len: Option<usize>,
}

fn text_of(turn: &Value) -> Option<String> {
    turn.get("value")
        .or_else(|| turn.get("content"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn parse_entry(v: &Value) -> Option<Entry> {
    if let Some(turns) = v
        .get("conversations")
        .or_else(|| v.get("conversation"))
        .and_then(Value::as_array)
    {
        if turns.len() < 2 {
            return None;
        }
        return Some(Entry {
            prompt: text_of(&turns[0])?,
            completion: Some(text_of(&turns[1])?),
            output_len: None,
        });
    }
    Some(Entry {
        prompt: v.get("prompt")?.as_str()?.to_string(),
        completion: v
            .get("completion")
            .or_else(|| v.get("output"))
            .and_then(Value::as_str)
            .map(str::to_string),
        output_len: v
            .get("output_len")
            .or_else(|| v.get("max_tokens"))
            .and_then(Value::as_u64)
            .map(|n| n as usize),
    })
}

fn read_entries(path: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |message: String| BenchError::Dataset {
        path: path.to_path_buf(),
        message,
    };
    let values: Vec<Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| bad(format!("line {}: {e}", i + 1))))
            .collect::<Result<_>>()?
    };
    Ok(values.iter().filter_map(parse_entry).collect())
}

/// Samples `num_prompts` requests from a file in a seeded random order, keeping only pairs
/// that pass vLLM's length filter.
pub fn file_requests(
    tok: &dyn TextTokenizer,
    path: &Path,
    spec: &FileSpec,
) -> Result<Vec<SampleRequest>> {
    let mut entries = read_entries(path)?;
    entries.shuffle(&mut StdRng::seed_from_u64(spec.seed));
    let mut out = Vec::with_capacity(spec.num_prompts);
    for e in entries {
        if out.len() == spec.num_prompts {
            break;
        }
        let prompt_ids = tok.encode(&e.prompt)?;
        let output_len = match (spec.output_len, e.output_len, &e.completion) {
            (Some(n), _, _) | (None, Some(n), _) => n,
            (None, None, Some(c)) => tok.encode(c)?.len(),
            (None, None, None) => continue,
        };
        let short_output = spec.output_len.is_none() && output_len < MIN_SEQ_LEN;
        if prompt_ids.len() < MIN_SEQ_LEN
            || short_output
            || prompt_ids.len() > MAX_PROMPT_LEN
            || prompt_ids.len() + output_len > MAX_TOTAL_LEN
        {
            continue;
        }
        out.push(SampleRequest {
            prompt: e.prompt,
            prompt_ids,
            expected_output_len: output_len,
        });
    }
    if out.is_empty() {
        return Err(BenchError::Dataset {
            path: path.to_path_buf(),
            message: "no usable prompt (each needs a prompt and a completion or output length, \
                      4..1024 prompt tokens)"
                .into(),
        });
    }
    if out.len() < spec.num_prompts {
        tracing::warn!(
            "{} holds only {} usable prompts of the {} asked for",
            path.display(),
            out.len(),
            spec.num_prompts
        );
    }
    Ok(out)
}

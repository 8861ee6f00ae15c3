//! Fuzz target `request`: the first byte picks a POST route, the rest is its body. Whatever
//! the bytes, validation either refuses with a client error (never a 5xx, never a panic) or
//! yields engine requests that fit the model: a non-empty prompt of in-vocabulary ids, at least
//! one token to generate, prompt plus output within `max_model_len`, and sampling parameters
//! in their ranges.

use std::sync::{Arc, OnceLock};

use crate::engine::{EngineCore, EngineHandle};
use crate::guidance::Guidance;
use crate::runner::MockRunner;
use crate::scheduler::{config::SchedulerConfig, Scheduler};
use crate::server::dry_run::{dry_run, Endpoint};
use crate::server::{AppState, ServerConfig};
use crate::tokenizer::{test_util, Tokenizer};

/// Small, so that long prompts and large `max_tokens` meet the limit.
pub const MAX_MODEL_LEN: usize = 256;
/// ChatML, as SmolLM2 uses.
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
const BLOCK_SIZE: usize = 16;
const NUM_BLOCKS: usize = 64;

/// A served model for validation: the byte-level test tokenizer with ChatML, structured
/// outputs on, an idle mock engine (validation never reaches it). Built once per process.
pub fn state() -> &'static Arc<AppState> {
    static STATE: OnceLock<Arc<AppState>> = OnceLock::new();
    STATE.get_or_init(|| {
        let mut tok = Tokenizer::from_gguf(&test_util::byte_level_content())
            .expect("the test tokenizer builds");
        tok.chat_template = Some(CHATML.into());
        let tok = Arc::new(tok);
        let vocab = tok.vocab_size();
        let eos = tok.eos_token_ids.clone();
        let engine_tok = tok.clone();
        let engine = EngineHandle::spawn(move || {
            let cfg = SchedulerConfig {
                block_size: BLOCK_SIZE,
                ..SchedulerConfig::default()
            };
            let scheduler = Scheduler::new(cfg, NUM_BLOCKS, MAX_MODEL_LEN, eos)?;
            let runner = MockRunner::new(NUM_BLOCKS, BLOCK_SIZE);
            Ok(EngineCore::new(scheduler, runner, engine_tok))
        })
        .expect("the mock engine starts");
        let guidance = Guidance::new(tok.clone(), vocab, &tok.eos_token_ids.clone())
            .map(Arc::new)
            .map_err(|e| e.to_string());
        let state = AppState::new(ServerConfig {
            served_model_names: vec!["tiny".into()],
            ..ServerConfig::default()
        });
        state.set_loaded_with_guidance(engine, tok, MAX_MODEL_LEN, "mock".into(), guidance);
        state
    })
}

pub fn fuzz(data: &[u8]) {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    let endpoint = Endpoint::ALL[route as usize % Endpoint::ALL.len()];
    let state = state();
    let vocab = state.loaded().expect("loaded").tokenizer.vocab_size();
    let jobs = match dry_run(state, endpoint, body) {
        Ok(jobs) => jobs,
        Err(e) => {
            assert!(
                e.status().is_client_error(),
                "{endpoint:?} answered {} ({e}) to {:?}",
                e.status(),
                String::from_utf8_lossy(body)
            );
            return;
        }
    };
    assert!(!jobs.is_empty(), "{endpoint:?}: accepted with no job");
    for job in &jobs {
        let p = &job.params;
        let why = || format!("{endpoint:?}: {:?}", String::from_utf8_lossy(body));
        assert!(!job.prompt.is_empty(), "empty prompt: {}", why());
        assert!(
            job.prompt.iter().all(|&t| (t as usize) < vocab),
            "token out of vocabulary: {}",
            why()
        );
        assert!(p.max_tokens >= 1, "nothing to generate: {}", why());
        assert!(
            job.prompt.len() + p.max_tokens <= MAX_MODEL_LEN,
            "past max_model_len: {}",
            why()
        );
        assert!(p.min_tokens <= p.max_tokens, "min_tokens: {}", why());
        assert!(
            p.temperature.is_finite() && p.temperature >= 0.0,
            "temperature: {}",
            why()
        );
        assert!(p.top_p > 0.0 && p.top_p <= 1.0, "top_p: {}", why());
        assert!(
            (0.0..=1.0).contains(&p.min_p)
                && p.repetition_penalty.is_finite()
                && p.repetition_penalty > 0.0,
            "min_p or repetition_penalty: {}",
            why()
        );
        assert!(
            p.logit_bias
                .iter()
                .all(|(&t, b)| (t as usize) < vocab && b.is_finite()),
            "logit_bias: {}",
            why()
        );
    }
}

//! `flare generate`: prompts in, streamed text out, speed on stderr.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use flare::chat_template::{ChatMessage, ChatTemplate};
use flare::engine::build_engine;
use flare::request::SamplingParams;
use flare::tokenizer::Tokenizer;

use super::common::ModelArgs;

const DEFAULT_PROMPT: &str = "What is the capital of France? Answer in one sentence.";

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (default: a short question, in chat format).
    #[arg(long)]
    pub prompt: Option<String>,
    /// A file with one prompt per line, run together as one continuous batch.
    #[arg(long)]
    pub prompts_file: Option<std::path::PathBuf>,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop strings (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long)]
    pub ignore_eos: bool,
}

fn render(tok: &Tokenizer, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    if !chat {
        return Ok(tok.encode(prompt, true)?);
    }
    let tpl =
        ChatTemplate::from_tokenizer(tok)?.context("--chat: the model has no chat template")?;
    let text = tpl.render(&[ChatMessage::new("user", prompt)], true)?;
    Ok(tok.encode(&text, false)?)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let (prompts, chat) = match (&args.prompts_file, &args.prompt) {
        (Some(f), _) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            (
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
                args.chat,
            )
        }
        (None, Some(p)) => (vec![p.clone()], args.chat),
        (None, None) => (vec![DEFAULT_PROMPT.to_string()], true),
    };
    anyhow::ensure!(!prompts.is_empty(), "no prompts given");
    let mut loaded = build_engine(&args.model.engine_args()?)?;
    let tok = loaded.tokenizer.clone();
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        ..SamplingParams::default()
    };
    let mut ids = Vec::new();
    let mut prompt_tokens = 0;
    for p in &prompts {
        let toks = render(&tok, p, chat)?;
        prompt_tokens += toks.len();
        ids.push(loaded.engine.add_request(toks, params.clone(), 0)?);
    }
    let single = prompts.len() == 1;
    let mut texts = vec![String::new(); prompts.len()];
    let mut output_tokens = 0;
    let mut first_token_at = None;
    let start = Instant::now();
    let mut stdout = std::io::stdout();
    while loaded.engine.has_unfinished() {
        for out in loaded.engine.step()? {
            first_token_at.get_or_insert_with(Instant::now);
            output_tokens += out.token_ids.len();
            let i = ids
                .iter()
                .position(|&x| x == out.id)
                .expect("known request");
            if let Some(e) = &out.error {
                eprintln!("[prompt {i} failed: {e}]");
            }
            texts[i].push_str(&out.text);
            if single {
                write!(stdout, "{}", out.text)?;
                stdout.flush()?;
            }
        }
    }
    let total = start.elapsed().as_secs_f64();
    if single {
        writeln!(stdout)?;
    } else {
        for (p, t) in prompts.iter().zip(&texts) {
            writeln!(stdout, "### {p}\n{t}\n")?;
        }
    }
    let prefill = first_token_at
        .map(|t| (t - start).as_secs_f64())
        .unwrap_or(total);
    let decode = (total - prefill).max(1e-9);
    eprintln!(
        "prompt: {prompt_tokens} tokens in {prefill:.2}s ({:.1} tok/s); output: {output_tokens} tokens in {total:.2}s \
         ({:.1} tok/s aggregate, {:.1} tok/s after the first token); {} requests",
        prompt_tokens as f64 / prefill,
        output_tokens as f64 / total,
        output_tokens.saturating_sub(prompts.len()) as f64 / decode,
        prompts.len()
    );
    Ok(())
}

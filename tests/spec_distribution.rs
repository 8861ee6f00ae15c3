//! Speculative sampling is lossless: on a random 8-token-vocabulary Llama at temperature 1
//! with top-p 0.9, the joint distribution of the first 3 generated tokens with n-gram
//! speculation matches the target's own, computed exactly from the model's logits with an
//! independent softmax and nucleus (chi-squared, fixed seeds). The same test rejects a
//! deliberately wrong rule (accept every draft), which shows it has the power to tell.

use std::collections::HashMap;

use flare::engine::{build_engine, EngineArgs, LoadFormat, LoadedEngine};
use flare::request::SamplingParams;
use flare::runner::candle::StepSeq;
use flare::sample::AcceptRule;
use flare::scheduler::config::SchedulerConfig;
use flare::spec::SpecConfig;

const VOCAB: usize = 8;
const TOP_P: f64 = 0.9;
const NUM_SAMPLES: u64 = 3000;

/// Written once per process: the tests run in parallel, and rewriting it while another test
/// reads it gave that test an empty file.
fn config_path() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(write_config).clone()
}

fn write_config() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flare-spec-dist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": 512,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "bos_token_id": 0,
        "eos_token_id": 7,
        "tie_word_embeddings": false,
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

fn engine(spec: bool) -> LoadedEngine {
    // All 3000 requests run at once: speculate at any batch size.
    let ngram = r#"{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 2, "prompt_lookup_max": 2, "disable_by_batch_size": 100000}"#;
    engine_with(spec.then_some(ngram))
}

/// The same random model as its own draft (greedy drafts of a model with random weights:
/// deterministic, so point masses, verified against the target's top-p distribution).
fn engine_with_draft() -> LoadedEngine {
    let spec = format!(
        r#"{{"method": "draft", "model": "{}", "num_speculative_tokens": 2, "disable_by_batch_size": 100000}}"#,
        config_path().display()
    );
    engine_with(Some(&spec))
}

fn engine_with(spec: Option<&str>) -> LoadedEngine {
    build_engine(&EngineArgs {
        model: Some(config_path().to_string_lossy().into_owned()),
        load_format: LoadFormat::Dummy,
        kv_cache_memory: Some(1 << 26),
        max_model_len: Some(128),
        scheduler: SchedulerConfig {
            max_num_batched_tokens: 8192,
            ..SchedulerConfig::default()
        },
        speculative: spec.map(|s| SpecConfig::parse(s).unwrap()),
        ..EngineArgs::default()
    })
    .unwrap()
}

/// A de Bruijn sequence of order 2 over the vocabulary: every bigram occurs, so prompt
/// lookup always finds the sequence's last two tokens and proposes what followed.
fn prompt() -> Vec<u32> {
    fn db(t: usize, p: usize, a: &mut [u32], out: &mut Vec<u32>) {
        if t > 2 {
            if 2 % p == 0 {
                out.extend_from_slice(&a[1..=p]);
            }
        } else {
            a[t] = a[t - p];
            db(t + 1, p, a, out);
            for j in a[t - p] + 1..VOCAB as u32 {
                a[t] = j;
                db(t + 1, t, a, out);
            }
        }
    }
    let mut out = Vec::new();
    db(1, 1, &mut [0; 3], &mut out);
    out.push(out[0]);
    out
}

/// softmax, then the smallest most-likely-first set reaching top-p, renormalized.
fn nucleus(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut order: Vec<usize> = (0..e.len()).collect();
    order.sort_by(|&a, &b| e[b].partial_cmp(&e[a]).unwrap().then(a.cmp(&b)));
    let mut keep = vec![0.0; e.len()];
    let mut cum = 0.0;
    for &i in &order {
        keep[i] = e[i] / z;
        cum += e[i] / z;
        if cum >= TOP_P - 1e-6 {
            break;
        }
    }
    let s: f64 = keep.iter().sum();
    keep.iter().map(|p| p / s).collect()
}

/// The exact probability of every (t1, t2, t3) after the prompt, from the model's logits.
fn exact(e: &LoadedEngine) -> HashMap<[u32; 3], f64> {
    let fwd = e.engine.runner().forward();
    let bs = e.engine.scheduler().kv().block_size();
    let p = prompt();
    let rows = |contexts: &[Vec<u32>]| -> Vec<Vec<f64>> {
        let per = (p.len() + 3).div_ceil(bs);
        let tables: Vec<Vec<u32>> = (0..contexts.len())
            .map(|i| ((i * per) as u32..((i + 1) * per) as u32).collect())
            .collect();
        let steps: Vec<StepSeq> = contexts
            .iter()
            .zip(&tables)
            .map(|(c, t)| StepSeq {
                new_tokens: c,
                num_computed: 0,
                block_table: t,
                logit_rows: 1,
                prompt_len: p.len(),
                seq_id: None,
            })
            .collect();
        fwd.step(&steps)
            .unwrap()
            .iter()
            .map(|r| nucleus(r))
            .collect()
    };
    let p1 = rows(std::slice::from_ref(&p)).remove(0);
    let ctx2: Vec<Vec<u32>> = (0..VOCAB as u32).map(|a| [&p[..], &[a]].concat()).collect();
    let p2 = rows(&ctx2);
    let mut out = HashMap::new();
    for a in 0..VOCAB as u32 {
        let ctx3: Vec<Vec<u32>> = (0..VOCAB as u32)
            .map(|b| [&p[..], &[a, b]].concat())
            .collect();
        let p3 = rows(&ctx3);
        for b in 0..VOCAB as u32 {
            for c in 0..VOCAB as u32 {
                let pr = p1[a as usize] * p2[a as usize][b as usize] * p3[b as usize][c as usize];
                if pr > 0.0 {
                    out.insert([a, b, c], pr);
                }
            }
        }
    }
    out
}

/// First three tokens of NUM_SAMPLES seeded requests.
fn sample(e: &mut LoadedEngine) -> HashMap<[u32; 3], u64> {
    let params = |seed| SamplingParams {
        temperature: 1.0,
        top_p: TOP_P as f32,
        max_tokens: 3,
        ignore_eos: true,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    let mut outs: HashMap<u64, Vec<u32>> = HashMap::new();
    for seed in 0..NUM_SAMPLES {
        let id = e.engine.add_request(prompt(), params(seed), 0).unwrap();
        outs.insert(id, Vec::new());
    }
    while e.engine.has_unfinished() {
        for o in e.engine.step().unwrap() {
            outs.get_mut(&o.id).unwrap().extend(o.token_ids);
        }
    }
    let mut counts = HashMap::new();
    for o in outs.values() {
        assert_eq!(o.len(), 3);
        *counts.entry([o[0], o[1], o[2]]).or_insert(0) += 1;
    }
    counts
}

/// Pearson's statistic over cells expected at least 5 times (the rest pooled, and any
/// observation of an impossible cell counted as infinitely unlikely); and its 0.1% critical
/// value (Wilson-Hilferty).
fn chi_squared(exact: &HashMap<[u32; 3], f64>, counts: &HashMap<[u32; 3], u64>) -> (f64, f64) {
    let n = NUM_SAMPLES as f64;
    let (mut stat, mut cells) = (0.0, 0usize);
    let (mut pooled_e, mut pooled_o) = (0.0, 0.0);
    for (cell, &p) in exact {
        let o = *counts.get(cell).unwrap_or(&0) as f64;
        if n * p >= 5.0 {
            stat += (o - n * p).powi(2) / (n * p);
            cells += 1;
        } else {
            pooled_e += n * p;
            pooled_o += o;
        }
    }
    if pooled_e > 0.0 {
        stat += (pooled_o - pooled_e).powi(2) / pooled_e;
        cells += 1;
    }
    if counts.keys().any(|c| !exact.contains_key(c)) {
        stat = f64::INFINITY;
    }
    let df = (cells - 1) as f64;
    let z = 3.09;
    let crit = df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
    (stat, crit)
}

#[test]
fn speculative_sampling_keeps_the_distribution_and_a_wrong_rule_is_caught() {
    let mut e = engine(true);
    let p = exact(&e);
    let total: f64 = p.values().sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert!(
        p.len() > 20,
        "a distribution worth testing: {} cells",
        p.len()
    );

    let counts = sample(&mut e);
    let s = e.engine.spec_stats().unwrap().clone();
    assert!(s.num_drafts > NUM_SAMPLES / 2, "{s:?}");
    assert!(
        s.num_accepted_tokens > 0 && s.num_accepted_tokens < s.num_draft_tokens,
        "{s:?}"
    );
    let (stat, crit) = chi_squared(&p, &counts);
    eprintln!("exact rule: chi2 {stat:.1}, critical {crit:.1}; {s:?}");
    assert!(
        stat < crit,
        "speculation changed the distribution: chi2 {stat} >= {crit}"
    );

    // Seeded requests are reproducible.
    assert_eq!(sample(&mut e), counts);

    // Power: accepting every draft is wrong and must fail the same test.
    e.engine
        .runner_mut()
        .set_accept_rule(AcceptRule::AlwaysAccept);
    let wrong = sample(&mut e);
    let (stat, crit) = chi_squared(&p, &wrong);
    eprintln!("always-accept rule: chi2 {stat:.1}, critical {crit:.1}");
    assert!(
        stat > crit,
        "the test cannot tell always-accept apart: {stat} <= {crit}"
    );

    // Without speculation the engine's own samples pass too (the reference is right).
    let mut off = engine(false);
    let (stat, crit) = chi_squared(&exact(&off), &sample(&mut off));
    assert!(stat < crit, "no speculation: chi2 {stat} >= {crit}");
}

/// Random sampling with a draft model: its drafts are verified with the same rejection rule,
/// and the first three tokens keep the target's distribution.
#[test]
fn draft_model_sampling_keeps_the_distribution() {
    let mut e = engine_with_draft();
    let p = exact(&e);
    let counts = sample(&mut e);
    let s = e.engine.spec_stats().unwrap().clone();
    assert!(s.num_drafts > NUM_SAMPLES / 2, "{s:?}");
    assert!(
        s.num_accepted_tokens > 0 && s.num_accepted_tokens < s.num_draft_tokens,
        "{s:?}"
    );
    let (stat, crit) = chi_squared(&p, &counts);
    eprintln!("draft model: chi2 {stat:.1}, critical {crit:.1}; {s:?}");
    assert!(
        stat < crit,
        "speculation changed the distribution: chi2 {stat} >= {crit}"
    );
}

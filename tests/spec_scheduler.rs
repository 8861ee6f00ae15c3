//! Speculative tokens in the one scheduling rule, without a model: the MockRunner verifies
//! drafts greedily against its token function, reading every context back from its simulated
//! paged cache. A noisy oracle proposes the true continuation with errors, so steps accept
//! some drafts and reject others. Outputs must equal plain decoding exactly, with prefix-cache
//! hits (a block holding an unverified token entered in the cache would feed a later sequence
//! a wrong context) and preemption, and the block accounting must hold after every step.

use std::hash::{DefaultHasher, Hash, Hasher};

use flare::kv::manager::SeqId;
use flare::request::SamplingParams;
use flare::runner::MockRunner;
use flare::scheduler::config::SchedulerConfig;
use flare::scheduler::{Scheduler, Sequence};
use flare::spec::{ProposeInput, Proposer, SpecConfig, SpecDecoder, SpecMethod};

const VOCAB: u32 = 50;
const EOS: u32 = 0;

fn next(ctx: &[u32]) -> u32 {
    // Never EOS, so every sequence runs to max_tokens.
    1 + MockRunner::context_token(ctx, VOCAB - 1)
}

/// Proposes the true continuation, with one wrong token at a pseudo-random place in about
/// half of the proposals.
struct NoisyOracle;

impl Proposer for NoisyOracle {
    fn propose(&mut self, seqs: &[ProposeInput]) -> anyhow::Result<Vec<Vec<u32>>> {
        Ok(seqs
            .iter()
            .map(|s| {
                let mut ctx = s.tokens.to_vec();
                let mut out = Vec::new();
                for _ in 0..s.max_drafts {
                    let t = next(&ctx);
                    ctx.push(t);
                    out.push(t);
                }
                let mut h = DefaultHasher::new();
                (s.id, s.tokens.len()).hash(&mut h);
                let r = h.finish();
                if r.is_multiple_of(2) && !out.is_empty() {
                    let i = (r / 2) as usize % out.len();
                    out[i] = 1 + (out[i] % (VOCAB - 1));
                }
                out
            })
            .collect())
    }
}

type Run = (Vec<Vec<u32>>, u64, Option<flare::spec::SpecStats>);

/// Speculates whatever the load.
fn run(spec: bool, num_blocks: usize) -> Run {
    run_with(spec, num_blocks, Some(usize::MAX))
}

/// `disable_by_batch_size` None: the default rule of a CPU target.
fn run_with(spec: bool, num_blocks: usize, disable_by_batch_size: Option<usize>) -> Run {
    let config = SchedulerConfig {
        block_size: 4,
        max_num_batched_tokens: 64,
        max_num_seqs: 8,
        ..SchedulerConfig::default()
    };
    let mut sched = Scheduler::new(config, num_blocks, 96, vec![EOS]).unwrap();
    let mut runner =
        MockRunner::with_token_fn(num_blocks, 4, Box::new(|_: SeqId, ctx: &[u32]| next(ctx)));
    let mut decoder = spec.then(|| {
        let mut config =
            SpecConfig::parse(r#"{"method": "ngram", "num_speculative_tokens": 3}"#).unwrap();
        config.disable_by_batch_size = disable_by_batch_size;
        if disable_by_batch_size.is_none() {
            // A draft model's default: 16 verify rows, so at most 4 sequences with K = 3.
            config.method = SpecMethod::Draft;
            config.model = Some("the oracle".into());
        }
        let limit = config.pause_above(true);
        (SpecDecoder::new(config, Box::new(NoisyOracle), true), limit)
    });
    let n = 12;
    for id in 0..n {
        // Shared 8-token prefixes in groups of three, so later sequences hit the cache.
        let mut prompt: Vec<u32> = (0..8).map(|i| 1 + ((id / 3) * 7 + i) as u32 % 40).collect();
        prompt.extend([1 + id as u32, 2]);
        let params = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(20 + (id as usize % 5) * 3)
        };
        sched.add(Sequence::new(id, prompt, params)).unwrap();
    }
    let mut outs = vec![Vec::new(); n as usize];
    let mut steps = 0;
    while sched.has_unfinished() {
        let out = sched.schedule();
        if let Some((d, _)) = &mut decoder {
            d.forget(out.preempted_ids.iter().chain(&out.finished_ids).copied());
        }
        assert!(out.total_tokens <= 64);
        let result = runner.execute(&out).unwrap();
        if let Some((d, _)) = &mut decoder {
            d.record_step(&out, &result);
        }
        for u in sched.update_from_output(&out, &result).unwrap() {
            outs[u.id as usize].extend(u.new_token_ids);
        }
        if let Some((d, _)) = &mut decoder {
            d.propose(&mut sched).unwrap();
        }
        if let Some((_, limit)) = decoder.as_ref() {
            let limit = *limit;
            let drafting = sched
                .running_ids()
                .iter()
                .any(|&id| !sched.get(id).unwrap().spec_token_ids().is_empty());
            assert!(
                !drafting || sched.num_running() <= limit,
                "drafts with {} running",
                sched.num_running()
            );
        }
        sched.check_invariants().unwrap();
        steps += 1;
        assert!(steps < 10_000);
    }
    assert_eq!(sched.kv().num_free_blocks(), num_blocks);
    let preemptions = sched.stats().num_preemptions;
    (outs, preemptions, decoder.map(|(d, _)| d.stats().clone()))
}

#[test]
fn drafts_are_verified_and_rolled_back_inside_the_one_rule() {
    for num_blocks in [200, 40] {
        let (want, _, _) = run(false, num_blocks);
        let (got, preemptions, stats) = run(true, num_blocks);
        assert_eq!(got, want, "{num_blocks} blocks");
        let s = stats.unwrap();
        assert!(s.num_drafts > 20, "{s:?}");
        assert!(
            s.num_accepted_tokens > 0 && s.num_accepted_tokens < s.num_draft_tokens,
            "{s:?}"
        );
        assert_eq!(
            s.accepted_per_position.iter().sum::<u64>(),
            s.num_accepted_tokens
        );
        if num_blocks == 40 {
            assert!(preemptions > 0, "a small cache must preempt");
        }
    }
}

#[test]
fn speculation_pauses_above_disable_by_batch_size() {
    let (want, _, _) = run(false, 200);
    let (got, _, stats) = run_with(true, 200, Some(4));
    assert_eq!(got, want);
    let (_, _, all) = run(true, 200);
    let (paused, all) = (stats.unwrap(), all.unwrap());
    assert!(paused.num_drafts > 0, "speculates once few run: {paused:?}");
    assert!(paused.num_drafts < all.num_drafts, "{paused:?} vs {all:?}");
}

/// Unset `disable_by_batch_size` on a CPU target with a draft model: the verify-row budget
/// pauses speculation while more than 4 sequences run (4 x 4 rows) and lets it go on once few
/// are left.
#[test]
fn speculation_pauses_by_default_at_high_load_on_the_cpu() {
    let (want, _, _) = run(false, 200);
    let (got, _, stats) = run_with(true, 200, None);
    assert_eq!(got, want);
    let (_, _, all) = run(true, 200);
    let (paused, all) = (stats.unwrap(), all.unwrap());
    assert!(paused.num_drafts > 0, "speculates once few run: {paused:?}");
    assert!(paused.num_drafts < all.num_drafts, "{paused:?} vs {all:?}");
}

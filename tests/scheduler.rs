//! Scheduler behaviour with the MockRunner: budget, chunked prefill, no decode starvation,
//! priorities, preemption by recompute, aborts in every state, prefix caching, stop conditions.

use std::collections::HashMap;

use flare::request::{FinishReason, SamplingParams};
use flare::runner::mock::TokenFn;
use flare::runner::MockRunner;
use flare::scheduler::{
    ModelRunnerOutput, Scheduler, SchedulerConfig, SchedulerError, SchedulerOutput,
    SchedulingPolicy, SeqId, SeqStatus, SeqUpdate, Sequence,
};
use proptest::prelude::*;

const EOS: u32 = 0;
const VOCAB: u32 = 64;

/// Scheduler plus MockRunner, checking the step invariants after every step.
struct Harness {
    sched: Scheduler,
    runner: MockRunner,
    outputs: HashMap<SeqId, Vec<u32>>,
    finished: HashMap<SeqId, FinishReason>,
    updates: Vec<SeqUpdate>,
}

impl Harness {
    fn new(config: SchedulerConfig, num_blocks: usize, max_model_len: usize) -> Self {
        let runner = MockRunner::with_token_fn(
            num_blocks,
            config.block_size,
            Box::new(|_, ctx| MockRunner::context_token(ctx, VOCAB)),
        );
        Self {
            sched: Scheduler::new(config, num_blocks, max_model_len, vec![EOS]).unwrap(),
            runner,
            outputs: HashMap::new(),
            finished: HashMap::new(),
            updates: Vec::new(),
        }
    }

    fn add(&mut self, id: SeqId, prompt: Vec<u32>, params: SamplingParams) {
        self.sched.add(Sequence::new(id, prompt, params)).unwrap();
    }

    fn step(&mut self) -> SchedulerOutput {
        let out = self.sched.schedule();
        check_step(&self.sched, &out);
        let result = self.runner.execute(&out).unwrap();
        let updates = self.sched.update_from_output(&out, &result).unwrap();
        for u in &updates {
            self.outputs
                .entry(u.id)
                .or_default()
                .extend(&u.new_token_ids);
            if let Some(r) = u.finish_reason {
                assert!(
                    self.finished.insert(u.id, r).is_none(),
                    "seq {} finished twice",
                    u.id
                );
            }
        }
        self.updates.extend(updates);
        self.sched.kv().check_invariants().unwrap();
        // Used blocks = the running sequences' blocks; waiting ones hold none.
        self.sched.check_invariants().unwrap();
        out
    }

    fn run_to_completion(&mut self, max_steps: usize) -> Vec<SchedulerOutput> {
        let mut steps = Vec::new();
        while self.sched.has_unfinished() {
            assert!(
                steps.len() < max_steps,
                "no completion after {max_steps} steps"
            );
            steps.push(self.step());
        }
        assert_all_free(&self.sched);
        steps
    }
}

/// Invariants of any step.
fn check_step(sched: &Scheduler, out: &SchedulerOutput) {
    let cfg = sched.config();
    let total: usize = out.seqs.iter().map(|s| s.num_new_tokens()).sum();
    assert_eq!(out.total_tokens, total);
    assert!(total <= cfg.max_num_batched_tokens, "over budget: {total}");
    assert!(out.seqs.len() <= cfg.max_num_seqs);
    assert!(sched.num_running() <= cfg.max_num_seqs);
    let mut ids: Vec<SeqId> = out.seqs.iter().map(|s| s.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), out.seqs.len(), "a sequence scheduled twice");
    for s in &out.seqs {
        let seq = sched.get(s.id).unwrap();
        assert_eq!(seq.status(), SeqStatus::Running);
        assert!(s.num_new_tokens() > 0);
        assert_eq!(s.num_computed_tokens, seq.num_computed_tokens());
        assert_eq!(
            s.new_token_ids,
            seq.all_tokens()[s.num_computed_tokens..s.context_len()]
        );
        assert_eq!(s.samples_this_step, s.context_len() == seq.num_tokens());
        assert!(s.block_table.len() * cfg.block_size >= s.context_len());
        if let Some(cap) = cfg.long_prefill_token_threshold {
            assert!(s.num_new_tokens() <= cap);
        }
        assert!(!out.preempted_ids.contains(&s.id));
    }
}

fn assert_all_free(sched: &Scheduler) {
    let kv = sched.kv();
    assert_eq!(
        kv.num_free_blocks(),
        kv.pool().num_blocks(),
        "blocks still in use"
    );
    assert_eq!(kv.num_seqs(), 0);
    assert_eq!(sched.num_running() + sched.num_waiting(), 0);
    kv.check_invariants().unwrap();
}

/// What the mock "model" generates for a prompt when nothing goes wrong, computed directly.
fn reference(prompt: &[u32], p: &SamplingParams, max_model_len: usize) -> (Vec<u32>, FinishReason) {
    let mut ctx = prompt.to_vec();
    let mut out = Vec::new();
    loop {
        let t = MockRunner::context_token(&ctx, VOCAB);
        ctx.push(t);
        out.push(t);
        let stop_tok = (!p.ignore_eos && t == EOS) || p.stop_token_ids.contains(&t);
        if out.len() >= p.min_tokens && stop_tok {
            return (out, FinishReason::Stop);
        }
        if out.len() >= p.max_tokens || ctx.len() >= max_model_len {
            return (out, FinishReason::Length);
        }
    }
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 1 + (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % (VOCAB - 1))
        .collect()
}

fn ignore_eos(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(max_tokens)
    }
}

fn config(budget: usize, max_num_seqs: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: budget,
        max_num_seqs,
        ..SchedulerConfig::default()
    }
}

#[test]
fn token_budget_and_max_num_seqs_respected_every_step() {
    let mut h = Harness::new(config(64, 4), 64, 512);
    for id in 0..12 {
        h.add(
            id,
            prompt(id as u32, 5 + 17 * id as usize),
            ignore_eos(3 + id as usize),
        );
    }
    let steps = h.run_to_completion(500);
    assert!(
        steps.iter().any(|s| s.total_tokens == 64),
        "budget never filled"
    );
    assert!(steps.iter().any(|s| s.seqs.len() == 4));
    for id in 0..12 {
        assert_eq!(h.outputs[&id].len(), 3 + id as usize);
        assert_eq!(h.finished[&id], FinishReason::Length);
    }
}

#[test]
fn long_prompt_is_prefilled_in_chunks() {
    let mut h = Harness::new(config(32, 8), 64, 512);
    let p = prompt(1, 100);
    h.add(1, p.clone(), ignore_eos(2));
    let mut chunks = Vec::new();
    for _ in 0..4 {
        let out = h.step();
        assert_eq!(out.seqs.len(), 1);
        let s = &out.seqs[0];
        chunks.push((
            s.num_computed_tokens,
            s.num_new_tokens(),
            s.samples_this_step,
        ));
    }
    assert_eq!(
        chunks,
        vec![
            (0, 32, false),
            (32, 32, false),
            (64, 32, false),
            (96, 4, true)
        ]
    );
    assert_eq!(h.outputs[&1], reference(&p, &ignore_eos(2), 512).0[..1]);
    h.run_to_completion(10);
}

#[test]
fn chunk_cap_limits_one_sequence_per_step() {
    let cfg = SchedulerConfig {
        long_prefill_token_threshold: Some(10),
        ..config(64, 8)
    };
    let mut h = Harness::new(cfg, 64, 512);
    h.add(1, prompt(1, 25), ignore_eos(1));
    h.add(2, prompt(2, 25), ignore_eos(1));
    let out = h.step();
    assert_eq!(
        out.seqs
            .iter()
            .map(|s| s.num_new_tokens())
            .collect::<Vec<_>>(),
        vec![10, 10]
    );
    h.run_to_completion(10);
}

/// A running decode gets one token every step while a 10k-token prompt is prefilled, whether it
/// was admitted before or after the long prompt.
#[test]
fn decodes_are_never_starved_by_a_long_prompt() {
    for long_first in [false, true] {
        let cfg = SchedulerConfig {
            long_prefill_token_threshold: Some(256),
            ..config(512, 8)
        };
        let mut h = Harness::new(cfg, 1024, 16_384);
        let long = prompt(7, 10_000);
        let (short_id, long_id) = (1, 2);
        if long_first {
            h.add(long_id, long.clone(), ignore_eos(2));
            h.add(short_id, prompt(3, 8), ignore_eos(100));
        } else {
            h.add(short_id, prompt(3, 8), ignore_eos(100));
            h.step(); // short prompt prefilled, now decoding
            h.add(long_id, long.clone(), ignore_eos(2));
        }
        let mut prefill_steps = 0;
        while !h.outputs.contains_key(&long_id) {
            let before = h.outputs.get(&short_id).map_or(0, Vec::len);
            let out = h.step();
            let after = h.outputs.get(&short_id).map_or(0, Vec::len);
            assert_eq!(
                after,
                before + 1,
                "decode starved (long_first = {long_first})"
            );
            assert!(out.seqs.iter().any(|s| s.id == long_id));
            prefill_steps += 1;
        }
        assert_eq!(prefill_steps, 10_000usize.div_ceil(256));
        assert_eq!(
            h.outputs[&long_id][0],
            reference(&long, &ignore_eos(2), 16_384).0[0]
        );
        h.run_to_completion(200);
    }
}

/// Under the priority policy, admission follows (priority, arrival); under FCFS, arrival only.
#[test]
fn admission_order_follows_policy() {
    for policy in [SchedulingPolicy::Priority, SchedulingPolicy::Fcfs] {
        let cfg = SchedulerConfig {
            policy,
            ..config(64, 1)
        };
        let mut h = Harness::new(cfg, 64, 512);
        for (id, prio) in [(10, 3), (11, 1), (12, 2), (13, 1), (14, -5)] {
            h.sched
                .add(Sequence::new(id, prompt(id as u32, 4), ignore_eos(2)).with_priority(prio))
                .unwrap();
        }
        let mut order = Vec::new();
        for out in h.run_to_completion(100) {
            for s in out.seqs {
                if s.num_computed_tokens == 0 {
                    order.push(s.id);
                }
            }
        }
        let want = match policy {
            SchedulingPolicy::Priority => vec![14, 11, 13, 12, 10],
            SchedulingPolicy::Fcfs => vec![10, 11, 12, 13, 14],
        };
        assert_eq!(order, want, "{policy:?}");
    }
}

/// Runs `n` sequences to completion and returns their outputs.
fn run_batch(
    cfg: SchedulerConfig,
    num_blocks: usize,
    n: u64,
) -> (Harness, HashMap<SeqId, Vec<u32>>) {
    let mut h = Harness::new(cfg, num_blocks, 128);
    for id in 0..n {
        h.add(id, prompt(id as u32, 20 + id as usize), ignore_eos(40));
    }
    h.run_to_completion(2_000);
    let outputs = h.outputs.clone();
    (h, outputs)
}

/// Too few blocks for everyone: sequences are preempted, recompute, and produce exactly the
/// tokens they produce with blocks to spare (the mock samples from the KV it reads back).
#[test]
fn preemption_by_recompute_gives_identical_outputs() {
    for caching in [true, false] {
        for policy in [SchedulingPolicy::Fcfs, SchedulingPolicy::Priority] {
            let cfg = SchedulerConfig {
                enable_prefix_caching: caching,
                policy,
                ..config(64, 8)
            };
            let (_, roomy) = run_batch(cfg.clone(), 256, 6);
            let (h, tight) = run_batch(cfg, 10, 6);
            assert!(
                h.sched.stats().num_preemptions > 0,
                "no preemption with 10 blocks"
            );
            assert_eq!(roomy, tight, "caching = {caching}, {policy:?}");
            for id in 0..6 {
                let p = prompt(id as u32, 20 + id as usize);
                assert_eq!(tight[&id], reference(&p, &ignore_eos(40), 128).0);
            }
        }
    }
}

#[test]
fn priority_policy_preempts_the_least_important() {
    let cfg = SchedulerConfig {
        policy: SchedulingPolicy::Priority,
        enable_prefix_caching: false,
        ..config(64, 8)
    };
    let mut h = Harness::new(cfg, 8, 128);
    // Admitted first but least important: it is the victim once blocks run out.
    h.sched
        .add(Sequence::new(1, prompt(1, 30), ignore_eos(60)).with_priority(5))
        .unwrap();
    h.sched
        .add(Sequence::new(2, prompt(2, 30), ignore_eos(60)).with_priority(0))
        .unwrap();
    let mut preempted = Vec::new();
    while preempted.is_empty() {
        preempted = h.step().preempted_ids;
    }
    assert_eq!(preempted, vec![1]);
    assert_eq!(h.sched.get(1).unwrap().status(), SeqStatus::Preempted);
    assert_eq!(h.sched.get(1).unwrap().num_computed_tokens(), 0);
    assert_eq!(h.sched.waiting_ids(), vec![1]);
    h.run_to_completion(1_000);
    assert_eq!(
        h.outputs[&1],
        reference(&prompt(1, 30), &ignore_eos(60), 128).0
    );
}

#[test]
fn fcfs_preempts_the_newest_and_requeues_it_first() {
    let cfg = SchedulerConfig {
        enable_prefix_caching: false,
        ..config(64, 3)
    };
    let mut h = Harness::new(cfg, 8, 128);
    h.add(1, prompt(1, 30), ignore_eos(60));
    h.add(2, prompt(2, 30), ignore_eos(60));
    h.add(3, prompt(3, 4), ignore_eos(60));
    h.add(4, prompt(4, 4), ignore_eos(60)); // waits: max_num_seqs is 3
    let mut preempted = Vec::new();
    while preempted.is_empty() {
        preempted = h.step().preempted_ids;
    }
    assert_eq!(preempted[0], 3, "the newest goes first");
    assert!(!preempted.contains(&1), "the oldest is never the victim");
    // Back to the front of the queue, ahead of 4 which never ran.
    preempted.sort();
    let waiting = h.sched.waiting_ids();
    assert_eq!(waiting[..preempted.len()], preempted[..]);
    assert_eq!(waiting.last(), Some(&4));
    h.run_to_completion(1_000);
}

/// Aborting in every state frees everything and leaves the rest undisturbed.
#[test]
fn abort_in_every_state_frees_all_blocks() {
    let cfg = SchedulerConfig {
        long_prefill_token_threshold: Some(16),
        ..config(64, 8)
    };
    let mut h = Harness::new(cfg, 8, 128);
    let state = |h: &Harness, id| h.sched.get(id).map(|s| s.status());

    // Waiting: never scheduled.
    h.add(1, prompt(1, 10), ignore_eos(5));
    let aborted = h.sched.abort(1).unwrap();
    assert_eq!(aborted.status(), SeqStatus::Finished(FinishReason::Abort));
    assert_all_free(&h.sched);
    assert_eq!(h.step().finished_ids, vec![1]);

    // Running, mid-prefill.
    h.add(2, prompt(2, 50), ignore_eos(5));
    h.step();
    let s = h.sched.get(2).unwrap();
    assert!(s.num_computed_tokens() > 0 && s.num_computed_tokens() < s.num_tokens());
    h.sched.abort(2).unwrap();
    assert_all_free(&h.sched);

    // Running, decoding.
    h.add(3, prompt(3, 5), ignore_eos(50));
    h.step();
    h.step();
    assert!(h.sched.get(3).unwrap().is_decoding());
    h.sched.abort(3).unwrap();
    assert_all_free(&h.sched);

    // Preempted: 8 blocks of 16 tokens, two sequences growing to 100 tokens each.
    h.add(4, prompt(4, 40), ignore_eos(60));
    h.add(5, prompt(5, 40), ignore_eos(60));
    let victim = loop {
        if let Some(&v) = h.step().preempted_ids.first() {
            break v;
        }
    };
    assert_eq!(state(&h, victim), Some(SeqStatus::Preempted));
    h.sched.abort(victim).unwrap();
    let other = if victim == 4 { 5 } else { 4 };
    h.run_to_completion(1_000);
    assert_eq!(h.finished[&other], FinishReason::Length);
    assert!(!h.finished.contains_key(&victim));

    // Finished: abort is a no-op.
    assert!(h.sched.abort(other).is_none());
    assert_all_free(&h.sched);

    // Aborted between schedule and update: the update skips it.
    h.add(6, prompt(6, 5), ignore_eos(5));
    let out = h.sched.schedule();
    let result = h.runner.execute(&out).unwrap();
    h.sched.abort(6).unwrap();
    assert!(h
        .sched
        .update_from_output(&out, &result)
        .unwrap()
        .is_empty());
    assert_all_free(&h.sched);
}

#[test]
fn external_finish_frees_blocks() {
    let mut h = Harness::new(config(64, 8), 16, 128);
    h.add(1, prompt(1, 20), ignore_eos(50));
    h.step();
    h.step();
    let seq = h.sched.finish(1, FinishReason::Stop).unwrap();
    assert_eq!(seq.num_output_tokens(), 2);
    assert_eq!(seq.status(), SeqStatus::Finished(FinishReason::Stop));
    assert_all_free(&h.sched);
}

#[test]
fn prefix_cache_hit_on_shared_prefix_and_not_across_salts() {
    let mut h = Harness::new(config(256, 8), 64, 512);
    let shared = prompt(9, 70);
    let with_tail = |t: u32| {
        let mut p = shared.clone();
        p.extend(prompt(t, 30));
        p
    };
    h.add(1, with_tail(1), ignore_eos(3));
    h.run_to_completion(20);
    assert_eq!(
        h.updates
            .iter()
            .find(|u| u.id == 1)
            .unwrap()
            .num_cached_prompt_tokens,
        0
    );

    // Same prefix: its 4 full blocks (64 of the 70 shared tokens) come from the cache.
    h.add(2, with_tail(2), ignore_eos(3));
    let out = h.step();
    assert_eq!(out.seqs[0].num_computed_tokens, 64);
    assert_eq!(out.seqs[0].num_new_tokens(), 100 - 64);
    assert_eq!(h.sched.get(2).unwrap().num_cached_prompt_tokens(), 64);
    h.run_to_completion(20);
    assert_eq!(
        h.updates
            .iter()
            .find(|u| u.id == 2)
            .unwrap()
            .num_cached_prompt_tokens,
        64
    );
    assert_eq!(
        h.outputs[&2],
        reference(&with_tail(2), &ignore_eos(3), 512).0
    );

    // Another salt (say, another LoRA adapter): no hit.
    h.sched
        .add(Sequence::new(3, with_tail(3), ignore_eos(3)).with_cache_salt(42))
        .unwrap();
    assert_eq!(h.step().seqs[0].num_computed_tokens, 0);
    h.run_to_completion(20);

    let stats = h.sched.stats();
    assert_eq!(stats.prefix_cache.queries, 300);
    assert_eq!(stats.prefix_cache.hits, 64);
}

#[test]
fn identical_prompt_recomputes_only_its_last_block() {
    let mut h = Harness::new(config(256, 8), 64, 512);
    let p = prompt(4, 64);
    h.add(1, p.clone(), ignore_eos(1));
    h.run_to_completion(10);
    h.add(2, p.clone(), ignore_eos(1));
    let out = h.step();
    assert_eq!(
        (
            out.seqs[0].num_computed_tokens,
            out.seqs[0].num_new_tokens()
        ),
        (48, 16)
    );
    assert_eq!(h.outputs[&2], h.outputs[&1]);
    h.run_to_completion(10);
}

#[test]
fn stop_conditions_end_sequences() {
    let eos_at = |n: usize| -> TokenFn {
        // Emits EOS as the n-th output of a 4-token prompt, otherwise 7.
        Box::new(move |_, ctx| if ctx.len() == 4 + n - 1 { EOS } else { 7 })
    };
    let cases: Vec<(SamplingParams, usize, usize, Vec<u32>, FinishReason)> = vec![
        (
            SamplingParams::greedy(10),
            3,
            512,
            vec![7, 7, EOS],
            FinishReason::Stop,
        ),
        (
            ignore_eos(5),
            3,
            512,
            vec![7, 7, EOS, 7, 7],
            FinishReason::Length,
        ),
        (
            SamplingParams {
                min_tokens: 4,
                ..SamplingParams::greedy(5)
            },
            3,
            512,
            vec![7, 7, EOS, 7, 7],
            FinishReason::Length,
        ),
        (
            SamplingParams {
                stop_token_ids: vec![7],
                ..SamplingParams::greedy(5)
            },
            3,
            512,
            vec![7],
            FinishReason::Stop,
        ),
        (
            SamplingParams::greedy(100),
            50,
            6,
            vec![7, 7],
            FinishReason::Length,
        ),
    ];
    for (params, n, max_model_len, want, reason) in cases {
        let cfg = config(64, 8);
        let mut sched = Scheduler::new(cfg.clone(), 64, max_model_len, vec![EOS]).unwrap();
        let mut runner = MockRunner::with_token_fn(64, cfg.block_size, eos_at(n));
        sched
            .add(Sequence::new(1, vec![1, 2, 3, 4], params.clone()))
            .unwrap();
        let mut got = Vec::new();
        let mut fin = None;
        while sched.has_unfinished() {
            let out = sched.schedule();
            let r = runner.execute(&out).unwrap();
            for u in sched.update_from_output(&out, &r).unwrap() {
                got.extend(u.new_token_ids);
                fin = fin.or(u.finish_reason);
            }
        }
        assert_eq!((got, fin), (want, Some(reason)), "{params:?}");
        assert_all_free(&sched);
    }
}

#[test]
fn speculative_style_multi_token_output_stops_at_eos() {
    let mut sched = Scheduler::new(config(64, 8), 16, 128, vec![EOS]).unwrap();
    sched
        .add(Sequence::new(1, vec![1, 2, 3], SamplingParams::greedy(10)))
        .unwrap();
    let out = sched.schedule();
    let first = ModelRunnerOutput {
        sampled: vec![(1, vec![5])],
        ..Default::default()
    };
    sched.update_from_output(&out, &first).unwrap();
    // Three drafts, all accepted, plus a bonus token: only the tokens up to EOS are output.
    sched.set_spec_tokens(1, vec![6, EOS, 9]);
    let out = sched.schedule();
    assert_eq!(out.seqs[0].new_token_ids, vec![5, 6, EOS, 9]);
    assert_eq!(out.seqs[0].num_spec_tokens, 3);
    let result = ModelRunnerOutput {
        sampled: vec![(1, vec![6, EOS, 9, 4])],
        ..Default::default()
    };
    let ups = sched.update_from_output(&out, &result).unwrap();
    assert_eq!(ups[0].new_token_ids, vec![6, EOS]);
    assert_eq!(ups[0].finish_reason, Some(FinishReason::Stop));
    assert_all_free(&sched);
}

#[test]
fn rejects_bad_requests_and_bad_runner_output() {
    let mut sched = Scheduler::new(config(64, 8), 16, 32, vec![EOS]).unwrap();
    assert_eq!(
        sched.add(Sequence::new(1, vec![], ignore_eos(1))),
        Err(SchedulerError::EmptyPrompt(1))
    );
    assert!(matches!(
        sched.add(Sequence::new(1, vec![1; 33], ignore_eos(1))),
        Err(SchedulerError::PromptTooLong { .. })
    ));
    assert_eq!(
        sched.add(Sequence::new(1, vec![1], ignore_eos(0))),
        Err(SchedulerError::ZeroMaxTokens(1))
    );
    sched
        .add(Sequence::new(1, vec![1; 32], ignore_eos(4)))
        .unwrap();
    assert_eq!(
        sched.add(Sequence::new(1, vec![1], ignore_eos(1))),
        Err(SchedulerError::DuplicateId(1))
    );

    let out = sched.schedule();
    assert_eq!(
        sched.update_from_output(&out, &ModelRunnerOutput::default()),
        Err(SchedulerError::MissingSample(1))
    );
    let result = ModelRunnerOutput {
        sampled: vec![(1, vec![5])],
        ..Default::default()
    };
    let ups = sched.update_from_output(&out, &result).unwrap();
    assert_eq!(
        ups[0].finish_reason,
        Some(FinishReason::Length),
        "prompt of max_model_len yields one token"
    );
    assert_all_free(&sched);

    sched
        .add(Sequence::new(2, vec![1; 8], ignore_eos(4)))
        .unwrap();
    let out = sched.schedule();
    let result = ModelRunnerOutput {
        sampled: vec![(2, vec![5])],
        ..Default::default()
    };
    sched.update_from_output(&out, &result).unwrap();
    assert_eq!(
        sched.update_from_output(&out, &result),
        Err(SchedulerError::StaleOutput(2))
    );

    assert!(
        Scheduler::new(config(64, 8), 1, 32, vec![]).is_err(),
        "pool smaller than one sequence"
    );
}

#[derive(Debug, Clone)]
struct Req {
    prompt_base: u32,
    shared_len: usize,
    tail: usize,
    params: SamplingParams,
    priority: i32,
    salt: u64,
    /// Step at which it arrives, and at which it is aborted (if still live).
    arrive: usize,
    abort: Option<usize>,
}

fn req() -> impl Strategy<Value = Req> {
    (
        (0..3u32, 0..60usize, 1..30usize),
        (
            1..25usize,
            0..4usize,
            any::<bool>(),
            prop::option::of(1..VOCAB),
        ),
        (
            -2..3i32,
            0..2u64,
            0..30usize,
            prop::option::weighted(0.2, 0..60usize),
        ),
    )
        .prop_map(
            |(
                (prompt_base, shared_len, tail),
                (max_tokens, min_tokens, ignore_eos, stop),
                (priority, salt, arrive, abort),
            )| Req {
                prompt_base,
                shared_len,
                tail,
                params: SamplingParams {
                    ignore_eos,
                    min_tokens,
                    stop_token_ids: stop.into_iter().collect(),
                    ..SamplingParams::greedy(max_tokens)
                },
                priority,
                salt,
                arrive,
                abort,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random arrivals and aborts under random limits run to completion: every step within
    /// budget and max_num_seqs, every completed sequence generates exactly what the model would
    /// alone, and every block is free at the end.
    #[test]
    fn random_workloads_complete_correctly(
        reqs in prop::collection::vec(req(), 1..14),
        budget in 1..96usize,
        max_num_seqs in 1..6usize,
        extra_blocks in 0..24usize,
        block_size in prop::sample::select(vec![1usize, 4, 16]),
        chunk in prop::option::of(1..40usize),
        caching in any::<bool>(),
        priority in any::<bool>(),
    ) {
        let max_model_len: usize = 96;
        let cfg = SchedulerConfig {
            max_num_seqs,
            max_num_batched_tokens: budget,
            block_size,
            enable_prefix_caching: caching,
            long_prefill_token_threshold: chunk,
            policy: if priority { SchedulingPolicy::Priority } else { SchedulingPolicy::Fcfs },
            num_lookahead_tokens: 0,
        };
        let num_blocks = max_model_len.div_ceil(block_size) + extra_blocks;
        let mut h = Harness::new(cfg, num_blocks, max_model_len);
        let prompts: Vec<Vec<u32>> = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut p = prompt(r.prompt_base, r.shared_len);
                p.extend(prompt(1000 + i as u32, r.tail));
                p.truncate(max_model_len);
                p
            })
            .collect();
        let mut aborted = Vec::new();
        let mut step = 0;
        loop {
            for (i, r) in reqs.iter().enumerate() {
                if r.arrive == step {
                    let seq = Sequence::new(i as SeqId, prompts[i].clone(), r.params.clone())
                        .with_priority(r.priority)
                        .with_cache_salt(r.salt);
                    h.sched.add(seq).unwrap();
                }
                if r.abort == Some(step) && h.sched.abort(i as SeqId).is_some() {
                    aborted.push(i as SeqId);
                }
            }
            if step > 30 && !h.sched.has_unfinished() {
                break;
            }
            prop_assert!(step < 5_000, "no progress");
            let busy = h.sched.has_unfinished();
            let out = h.step();
            // Liveness: with work to do, a step computes something or at least makes room.
            prop_assert!(!busy || !out.is_empty() || !out.preempted_ids.is_empty());
            step += 1;
        }
        assert_all_free(&h.sched);
        for (i, r) in reqs.iter().enumerate() {
            let id = i as SeqId;
            if aborted.contains(&id) {
                prop_assert!(!h.finished.contains_key(&id));
                continue;
            }
            let (want, reason) = reference(&prompts[i], &r.params, max_model_len);
            prop_assert_eq!(h.outputs.get(&id), Some(&want), "seq {}", id);
            prop_assert_eq!(h.finished.get(&id), Some(&reason), "seq {}", id);
        }
    }
}

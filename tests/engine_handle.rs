//! The engine thread behind EngineHandle, with the MockRunner: concurrent streams, abort on
//! drop frees blocks within a step, errors at admission, shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flare::engine::{EngineCore, EngineHandle, RequestEvent};
use flare::request::{FinishReason, SamplingParams};
use flare::runner::MockRunner;
use flare::scheduler::{config::SchedulerConfig, Scheduler};
use flare::tokenizer::{test_util, Tokenizer};

const BLOCKS: usize = 64;

fn spawn(step_delay: Duration) -> EngineHandle {
    EngineHandle::spawn(move || {
        let tok = Tokenizer::from_gguf(&test_util::byte_level_content())?;
        let vocab = tok.vocab_size() as u32;
        let cfg = SchedulerConfig {
            block_size: 16,
            ..SchedulerConfig::default()
        };
        let scheduler = Scheduler::new(cfg, BLOCKS, 512, vec![])?;
        let runner = MockRunner::with_token_fn(
            BLOCKS,
            16,
            Box::new(move |_, ctx| {
                std::thread::sleep(step_delay);
                // Printable ASCII-ish ids only, never an EOS.
                10 + MockRunner::context_token(ctx, vocab - 20)
            }),
        );
        Ok(EngineCore::new(scheduler, runner, Arc::new(tok)))
    })
    .unwrap()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_finish_and_return_all_blocks() {
    let h = spawn(Duration::ZERO);
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let prompt: Vec<u32> = (0..20 + i * 7).map(|t| 30 + t % 50).collect();
            let mut s = h.add(prompt, SamplingParams::greedy(12), 0).await.unwrap();
            let (mut tokens, mut finish) = (0, None);
            while let Some(ev) = s.next().await {
                match ev {
                    RequestEvent::Output(o) => {
                        tokens += o.token_ids.len();
                        finish = o.finish_reason;
                        assert_eq!(o.num_output_tokens, tokens);
                    }
                    RequestEvent::Error(e) => panic!("{e}"),
                }
            }
            (tokens, finish)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), (12, Some(FinishReason::Length)));
    }
    wait_until("idle engine", || {
        h.stats().num_free_blocks == BLOCKS && h.stats().scheduler.num_running == 0
    })
    .await;
    assert!(h.is_alive());
    h.shutdown();
    assert!(!h.is_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_aborts_and_frees_its_blocks() {
    let h = spawn(Duration::from_millis(2));
    let mut s = h
        .add((0..40).collect(), SamplingParams::greedy(400), 0)
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(s.next().await, Some(RequestEvent::Output(_))));
    }
    assert!(
        h.stats().num_free_blocks < BLOCKS,
        "the running request holds blocks"
    );
    drop(s);
    wait_until("blocks freed after drop", || {
        h.stats().num_free_blocks == BLOCKS
    })
    .await;
    assert_eq!(h.stats().scheduler.num_running, 0);
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_at_admission() {
    let h = spawn(Duration::ZERO);
    let err = h
        .add(vec![1; 600], SamplingParams::greedy(4), 0)
        .await
        .err()
        .expect("too long");
    assert!(err.to_string().contains("600"), "{err}");
    assert!(h.add(vec![], SamplingParams::greedy(4), 0).await.is_err());
    // The engine keeps serving after refusals.
    let mut s = h
        .add(vec![40, 41, 42], SamplingParams::greedy(2), 0)
        .await
        .unwrap();
    let mut n = 0;
    while let Some(RequestEvent::Output(o)) = s.next().await {
        n += o.token_ids.len();
    }
    assert_eq!(n, 2);
    h.shutdown();
}

/// A reader that never reads: the engine does not wait for it. Its request runs to the end and
/// frees its blocks with nothing read, and another request is served meanwhile. What waits for
/// the reader is one event per step that made tokens, so memory is bounded by the request's
/// own `max_tokens`: no event without a token, every token exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_stream_neither_stalls_the_engine_nor_outgrows_its_max_tokens() {
    let h = spawn(Duration::ZERO);
    let max_tokens = 300;
    let mut unread = h
        .add((0..40).collect(), SamplingParams::greedy(max_tokens), 0)
        .await
        .unwrap();
    let mut other = h
        .add(vec![40, 41, 42], SamplingParams::greedy(20), 0)
        .await
        .unwrap();
    let mut n = 0;
    while let Some(RequestEvent::Output(o)) = other.next().await {
        n += o.token_ids.len();
    }
    assert_eq!(n, 20);
    wait_until("the unread request to finish in the engine", || {
        let s = h.stats();
        s.num_free_blocks == BLOCKS && s.scheduler.num_running + s.scheduler.num_waiting == 0
    })
    .await;
    let (mut events, mut tokens, mut finish) = (0, 0, None);
    while let Some(ev) = unread.next().await {
        let RequestEvent::Output(o) = ev else {
            panic!("{ev:?}")
        };
        assert!(!o.token_ids.is_empty(), "an event without a token");
        events += 1;
        tokens += o.token_ids.len();
        finish = o.finish_reason;
    }
    assert_eq!((tokens, finish), (max_tokens, Some(FinishReason::Length)));
    assert!(
        events <= max_tokens,
        "{events} events for {max_tokens} tokens"
    );
    h.shutdown();
}

/// The after-step invariant checker can fail: a sequence in the scheduler that no request owns
/// (holding KV blocks nobody will free) is reported, and with the check on, the step that finds
/// it panics (on the engine thread that turns /health to 503; tests/server_faults.rs).
#[test]
fn the_invariant_checker_catches_a_sequence_no_request_owns() {
    use flare::scheduler::Sequence;
    let engine = |orphan: bool| {
        let tok = Tokenizer::from_gguf(&test_util::byte_level_content()).unwrap();
        let cfg = SchedulerConfig {
            block_size: 16,
            ..SchedulerConfig::default()
        };
        let mut scheduler = Scheduler::new(cfg, BLOCKS, 512, vec![]).unwrap();
        if orphan {
            scheduler
                .add(Sequence::new(999, vec![40; 20], SamplingParams::greedy(8)))
                .unwrap();
        }
        let runner = MockRunner::with_token_fn(BLOCKS, 16, Box::new(|_, _| 50));
        let mut core = EngineCore::new(scheduler, runner, Arc::new(tok));
        core.set_check_invariants(true);
        core.add_request(vec![41; 20], SamplingParams::greedy(8), 0)
            .unwrap();
        core
    };
    let mut sound = engine(false);
    sound.check_invariants().unwrap();
    while sound.has_unfinished() {
        sound.step().unwrap();
    }
    let mut broken = engine(true);
    let err = broken.check_invariants().unwrap_err();
    assert!(err.contains("2 live sequences but 1 requests"), "{err}");
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| broken.step()))
        .expect_err("the step must panic");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("engine invariant broken"), "{msg}");
}

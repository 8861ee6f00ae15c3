//! Prometheus metrics with vLLM's names under a `flare:` prefix. They live on a recorder of the
//! server's own rather than the process-wide one, so servers in one process (tests) keep
//! separate counts.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engine::EngineStats;
use crate::request::FinishReason;

/// vLLM's buckets, so dashboards built for vLLM read flare's histograms the same way.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

const TTFT: &str = "flare:time_to_first_token_seconds";
const TPOT: &str = "flare:time_per_output_token_seconds";
const E2E: &str = "flare:e2e_request_latency_seconds";

static META: Metadata<'static> = Metadata::new("flare::server", Level::INFO, None);

pub struct Metrics {
    /// Kept to register per-key counters as keys are configured.
    recorder: metrics_exporter_prometheus::PrometheusRecorder,
    model: Label,
    handle: PrometheusHandle,
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge,
    kv_used_blocks: Gauge,
    kv_total_blocks: Gauge,
    kv_capacity_tokens: Gauge,
    kv_bytes_per_token: Gauge,
    kv_capacity_gain: Gauge,
    prefix_queries: Counter,
    prefix_hits: Counter,
    prefix_hit_rate: Gauge,
    preemptions: Counter,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    ttft: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    success_stop: Counter,
    success_length: Counter,
    success_abort: Counter,
    aborted: Counter,
}

/// One API key's counters.
pub struct KeyCounters {
    pub prompt: Counter,
    pub cached: Counter,
    pub completion: Counter,
    pub limited: Counter,
}

struct Registrar<'a> {
    rec: &'a metrics_exporter_prometheus::PrometheusRecorder,
    model: Label,
}

impl Registrar<'_> {
    fn key(&self, name: &'static str, extra: &[(&'static str, &'static str)]) -> Key {
        let mut labels = vec![self.model.clone()];
        labels.extend(extra.iter().map(|&(k, v)| Label::new(k, v)));
        Key::from_parts(name, labels)
    }

    fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.counter_with(name, help, &[])
    }

    fn counter_with(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Counter {
        self.rec
            .describe_counter(KeyName::from_const_str(name), None, help.into());
        self.rec.register_counter(&self.key(name, labels), &META)
    }

    fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.rec
            .describe_gauge(KeyName::from_const_str(name), None, help.into());
        self.rec.register_gauge(&self.key(name, &[]), &META)
    }

    fn histogram(&self, name: &'static str, help: &'static str) -> Histogram {
        self.rec
            .describe_histogram(KeyName::from_const_str(name), None, help.into());
        self.rec.register_histogram(&self.key(name, &[]), &META)
    }
}

impl Metrics {
    pub fn new(model_name: &str) -> Self {
        let builder = [
            (TTFT, TTFT_BUCKETS),
            (TPOT, TPOT_BUCKETS),
            (E2E, E2E_BUCKETS),
        ]
        .into_iter()
        .fold(PrometheusBuilder::new(), |b, (name, buckets)| {
            b.set_buckets_for_metric(Matcher::Full(name.into()), buckets)
                .expect("non-empty buckets")
        });
        let rec = builder.build_recorder();
        let r = Registrar {
            rec: &rec,
            model: Label::new("model_name", model_name.to_string()),
        };
        Self {
            running: r.gauge(
                "flare:num_requests_running",
                "Requests in the running batch.",
            ),
            waiting: r.gauge(
                "flare:num_requests_waiting",
                "Requests waiting to run (preempted ones included).",
            ),
            kv_usage: r.gauge(
                "flare:kv_cache_usage_perc",
                "Fraction of KV cache blocks in use (1 = full).",
            ),
            kv_used_blocks: r.gauge(
                "flare:kv_cache_used_blocks",
                "KV cache blocks held by requests.",
            ),
            kv_total_blocks: r.gauge("flare:kv_cache_total_blocks", "KV cache blocks in all."),
            kv_capacity_tokens: r.gauge(
                "flare:kv_cache_capacity_tokens",
                "Tokens the KV cache holds in all (blocks x block size).",
            ),
            kv_bytes_per_token: r.gauge(
                "flare:kv_cache_bytes_per_token",
                "Bytes of K and V one token takes across all layers (by --kv-cache-dtype).",
            ),
            kv_capacity_gain: r.gauge(
                "flare:kv_cache_capacity_gain",
                "Tokens held per token a cache in the model's dtype would hold in the same \
                 memory (2 for --kv-cache-dtype fp8 with bf16 weights).",
            ),
            prefix_queries: r.counter(
                "flare:prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache.",
            ),
            prefix_hits: r.counter(
                "flare:prefix_cache_hits_total",
                "Prompt tokens found in the prefix cache.",
            ),
            prefix_hit_rate: r.gauge(
                "flare:prefix_cache_hit_rate",
                "Prefix cache hits over queries since start, in tokens.",
            ),
            preemptions: r.counter(
                "flare:num_preemptions_total",
                "Requests preempted (KV blocks reclaimed, recomputed later).",
            ),
            prompt_tokens: r.counter(
                "flare:prompt_tokens_total",
                "Prompt tokens of requests that produced output.",
            ),
            generation_tokens: r.counter("flare:generation_tokens_total", "Tokens generated."),
            ttft: r.histogram(TTFT, "Seconds from arrival to the first output token."),
            tpot: r.histogram(
                TPOT,
                "Mean seconds per output token after the first, per finished request.",
            ),
            e2e: r.histogram(E2E, "Seconds from arrival to the last output token."),
            success_stop: r.counter_with(
                "flare:request_success_total",
                "Requests that finished, by reason.",
                &[("finished_reason", "stop")],
            ),
            success_length: r.counter_with(
                "flare:request_success_total",
                "Requests that finished, by reason.",
                &[("finished_reason", "length")],
            ),
            success_abort: r.counter_with(
                "flare:request_success_total",
                "Requests that finished, by reason.",
                &[("finished_reason", "abort")],
            ),
            aborted: r.counter(
                "flare:request_aborted_total",
                "Requests whose client went away before they finished.",
            ),
            handle: rec.handle(),
            model: r.model.clone(),
            recorder: rec,
        }
    }

    /// Token counters of one API key, labelled by its id (never its secret).
    pub fn key_counters(&self, key_id: &str) -> KeyCounters {
        let r = Registrar {
            rec: &self.recorder,
            model: self.model.clone(),
        };
        let counter = |name: &'static str, help: &'static str| {
            r.rec
                .describe_counter(KeyName::from_const_str(name), None, help.into());
            let key = Key::from_parts(
                name,
                vec![r.model.clone(), Label::new("key_id", key_id.to_string())],
            );
            r.rec.register_counter(&key, &META)
        };
        KeyCounters {
            prompt: counter(
                "flare:key_prompt_tokens_total",
                "Prompt tokens of requests admitted to the engine, by API key.",
            ),
            cached: counter(
                "flare:key_cached_prompt_tokens_total",
                "Prompt tokens served from the prefix cache, by API key.",
            ),
            completion: counter(
                "flare:key_completion_tokens_total",
                "Tokens generated, by API key.",
            ),
            limited: counter(
                "flare:key_rate_limited_total",
                "Requests refused with 429 by the key's own limits, by API key.",
            ),
        }
    }

    /// Copies the engine's own numbers into the gauges; called on every scrape.
    pub fn refresh(&self, stats: &EngineStats) {
        let s = &stats.scheduler;
        self.running.set(s.num_running as f64);
        self.waiting.set(s.num_waiting as f64);
        self.kv_usage.set(s.kv_usage);
        self.kv_used_blocks
            .set(stats.num_blocks.saturating_sub(stats.num_free_blocks) as f64);
        self.kv_total_blocks.set(stats.num_blocks as f64);
        if let Some(kv) = &stats.kv_info {
            self.kv_capacity_tokens
                .set((stats.num_blocks * kv.block_size) as f64);
            self.kv_bytes_per_token.set(kv.bytes_per_token as f64);
            self.kv_capacity_gain.set(kv.capacity_gain());
        }
        self.prefix_queries.absolute(s.prefix_cache.queries);
        self.prefix_hits.absolute(s.prefix_cache.hits);
        self.prefix_hit_rate.set(s.prefix_cache_hit_rate());
        self.preemptions.absolute(s.num_preemptions);
        if let Some(spec) = &stats.spec {
            self.refresh_spec(spec);
        }
    }

    /// vLLM's `spec_decode_*` counters, registered once speculation is on.
    fn refresh_spec(&self, s: &crate::spec::SpecStats) {
        let counter = |name: &'static str, help: &'static str, labels: Vec<Label>| {
            self.recorder
                .describe_counter(KeyName::from_const_str(name), None, help.into());
            let mut all = vec![self.model.clone()];
            all.extend(labels);
            self.recorder
                .register_counter(&Key::from_parts(name, all), &META)
        };
        counter(
            "flare:spec_decode_num_drafts_total",
            "Verifications of speculative draft tokens (one per sequence and step).",
            vec![],
        )
        .absolute(s.num_drafts);
        counter(
            "flare:spec_decode_num_draft_tokens_total",
            "Draft tokens proposed and verified.",
            vec![],
        )
        .absolute(s.num_draft_tokens);
        counter(
            "flare:spec_decode_num_accepted_tokens_total",
            "Draft tokens accepted.",
            vec![],
        )
        .absolute(s.num_accepted_tokens);
        for (i, &n) in s.accepted_per_position.iter().enumerate() {
            counter(
                "flare:spec_decode_num_accepted_tokens_per_pos_total",
                "Draft tokens accepted at each position of a proposal (0-based).",
                vec![Label::new("position", i.to_string())],
            )
            .absolute(n);
        }
    }

    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Histogram samples wait in per-handle buffers until a render or this; call it now and
    /// then so an unscraped server does not grow them without bound.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    pub fn on_first_token(&self, num_prompt_tokens: usize, since_arrival: Duration) {
        self.prompt_tokens.increment(num_prompt_tokens as u64);
        self.ttft.record(since_arrival.as_secs_f64());
    }

    pub fn on_tokens(&self, n: usize) {
        self.generation_tokens.increment(n as u64);
    }

    pub fn on_finish(
        &self,
        reason: FinishReason,
        num_output_tokens: usize,
        since_arrival: Duration,
        since_first_token: Duration,
    ) {
        self.e2e.record(since_arrival.as_secs_f64());
        if num_output_tokens > 1 {
            self.tpot
                .record(since_first_token.as_secs_f64() / (num_output_tokens - 1) as f64);
        }
        match reason {
            FinishReason::Stop => self.success_stop.increment(1),
            FinishReason::Length => self.success_length.increment(1),
            FinishReason::Abort => self.success_abort.increment(1),
        }
    }

    pub fn on_client_gone(&self) {
        self.aborted.increment(1);
    }
}

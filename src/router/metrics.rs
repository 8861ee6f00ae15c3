//! Counters of the cascade routes, labelled `model_name` (the route), `target`, `reason`: how
//! many requests each target answered, why requests escalated, what each target cost in tokens.

use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

static META: Metadata<'static> = Metadata::new("flare::router", Level::INFO, None);

pub const REQUESTS: &str = "flare:route_requests_total";
pub const ANSWERED: &str = "flare:route_answered_total";
pub const ESCALATIONS: &str = "flare:route_escalations_total";
pub const FAILURES: &str = "flare:route_target_failures_total";
pub const PROMPT_TOKENS: &str = "flare:route_target_prompt_tokens_total";
pub const COMPLETION_TOKENS: &str = "flare:route_target_completion_tokens_total";

pub struct RouteMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let me = Self { recorder, handle };
        for (name, help) in [
            (
                REQUESTS,
                "Requests run on a route's target (every attempt), by target.",
            ),
            (
                ANSWERED,
                "Requests of a route answered by a target, by target.",
            ),
            (
                ESCALATIONS,
                "Requests passed on to the next target, by reason.",
            ),
            (
                FAILURES,
                "Target calls that failed (connect error, 5xx, 429 after retries).",
            ),
            (PROMPT_TOKENS, "Prompt tokens spent on a route's target."),
            (
                COMPLETION_TOKENS,
                "Completion tokens spent on a route's target.",
            ),
        ] {
            me.recorder.describe_counter(name.into(), None, help.into());
        }
        me
    }
}

impl RouteMetrics {
    fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let labels: Vec<Label> = labels
            .iter()
            .map(|&(k, v)| Label::new(k, v.to_string()))
            .collect();
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &META)
            .increment(n);
    }

    pub fn attempt(&self, route: &str, target: &str) {
        self.add(REQUESTS, &[("model_name", route), ("target", target)], 1);
    }

    pub fn answered(&self, route: &str, target: &str) {
        self.add(ANSWERED, &[("model_name", route), ("target", target)], 1);
    }

    pub fn escalation(&self, route: &str, reason: &str) {
        self.add(ESCALATIONS, &[("model_name", route), ("reason", reason)], 1);
    }

    pub fn failure(&self, route: &str, target: &str) {
        self.add(FAILURES, &[("model_name", route), ("target", target)], 1);
    }

    pub fn tokens(&self, route: &str, target: &str, prompt: u64, completion: u64) {
        let l = [("model_name", route), ("target", target)];
        self.add(PROMPT_TOKENS, &l, prompt);
        self.add(COMPLETION_TOKENS, &l, completion);
    }

    pub fn render(&self) -> String {
        self.handle.render()
    }
}

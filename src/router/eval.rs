//! `flare route eval`: replays prompts with expected answers through every target of a route
//! once, then computes what the cascade would have done at each threshold of the mean token
//! logprob test (the route's other tests as configured): accuracy, escalation rate and cost.
//!
//! An answer is correct when it contains one of the expected strings (case-insensitive).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::cascade::Route;
use super::confidence::{judge, Api, Confidence};
use super::target::Called;

/// One line of the prompt set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalItem {
    /// A user message (sent as a chat request).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Or a whole conversation.
    #[serde(default)]
    pub messages: Option<Value>,
    /// One correct answer or several.
    pub expected: Expected,
    #[serde(default)]
    pub max_tokens: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Expected {
    One(String),
    Any(Vec<String>),
}

impl Expected {
    pub fn matches(&self, answer: &str) -> bool {
        let a = answer.to_lowercase();
        let list: Vec<&String> = match self {
            Expected::One(s) => vec![s],
            Expected::Any(v) => v.iter().collect(),
        };
        list.iter().any(|e| a.contains(&e.to_lowercase()))
    }
}

pub fn load_items(path: &Path) -> Result<Vec<EvalItem>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: EvalItem = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a prompt line", path.display(), i + 1))?;
        if item.prompt.is_some() == item.messages.is_some() {
            bail!(
                "{}:{}: give exactly one of `prompt` and `messages`",
                path.display(),
                i + 1
            );
        }
        items.push(item);
    }
    if items.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(items)
}

/// One target's answer to one prompt.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub correct: bool,
    pub confidence: Option<ConfidenceOut>,
    pub tokens: u64,
    pub failed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfidenceOut {
    pub mean_logprob: Option<f64>,
    pub min_logprob: Option<f64>,
    pub hit_length: bool,
}

/// The cascade at one threshold.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// None: the route's own configuration.
    pub threshold: Option<f64>,
    pub accuracy: f64,
    pub escalation_rate: f64,
    /// Sum over prompts of tokens times each visited target's price per 1000 tokens.
    pub cost: f64,
    /// Tokens spent per target, in target order.
    pub tokens: Vec<u64>,
    /// Prompts answered per target.
    pub answered: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub route: String,
    pub targets: Vec<String>,
    pub prompts: usize,
    /// Accuracy of each target alone.
    pub target_accuracy: Vec<f64>,
    pub rows: Vec<Row>,
}

/// Runs every prompt on every target of `route` (greedy, with logprobs), then simulates.
pub async fn evaluate(
    route: &Route,
    items: &[EvalItem],
    thresholds: &[f64],
    default_max_tokens: u64,
) -> Result<Report> {
    let targets = route.targets();
    let mut answers: Vec<Vec<(Answer, Confidence)>> = Vec::new();
    for item in items {
        let messages = match (&item.prompt, &item.messages) {
            (Some(p), _) => json!([{"role": "user", "content": p}]),
            (None, Some(m)) => m.clone(),
            (None, None) => unreachable!("checked at load"),
        };
        let body = json!({
            "messages": messages,
            "temperature": 0,
            "max_tokens": item.max_tokens.unwrap_or(default_max_tokens),
            "logprobs": true,
        });
        let mut per = Vec::new();
        for (name, target) in targets {
            let (answer, c) = match target.call(Api::Chat, body.clone(), None).await {
                Called::Answer(v) => {
                    let c = Confidence::of_response(Api::Chat, &body, &v);
                    let text = v["choices"][0]["message"]["content"]
                        .as_str()
                        .unwrap_or_default();
                    let tokens = v["usage"]["total_tokens"].as_u64().unwrap_or(0);
                    (
                        Answer {
                            correct: item.expected.matches(text),
                            confidence: Some(ConfidenceOut {
                                mean_logprob: c.mean_logprob,
                                min_logprob: c.min_logprob,
                                hit_length: c.hit_length,
                            }),
                            tokens,
                            failed: false,
                        },
                        c,
                    )
                }
                Called::Refused(r) => bail!("target `{name}` refused a prompt: {}", r.status()),
                Called::Failed(e) => {
                    tracing::warn!("target `{name}` failed: {e}");
                    let a = Answer {
                        correct: false,
                        confidence: None,
                        tokens: 0,
                        failed: true,
                    };
                    (a, Confidence::default())
                }
            };
            per.push((answer, c));
        }
        answers.push(per);
    }
    let prices: Vec<f64> = route
        .cfg
        .targets
        .iter()
        .map(|t| t.cost_per_1k_tokens)
        .collect();
    let mut rows = vec![simulate(route, &answers, &prices, None)];
    for &t in thresholds {
        rows.push(simulate(route, &answers, &prices, Some(t)));
    }
    let n = items.len().max(1) as f64;
    Ok(Report {
        route: route.name().to_string(),
        targets: targets.iter().map(|(n, _)| n.clone()).collect(),
        prompts: items.len(),
        target_accuracy: (0..targets.len())
            .map(|j| answers.iter().filter(|a| a[j].0.correct).count() as f64 / n)
            .collect(),
        rows,
    })
}

fn simulate(
    route: &Route,
    answers: &[Vec<(Answer, Confidence)>],
    prices: &[f64],
    threshold: Option<f64>,
) -> Row {
    let mut cfg = route.cfg.escalate.clone();
    if threshold.is_some() {
        cfg.min_mean_logprob = threshold;
    }
    let k = prices.len();
    let (mut correct, mut escalated, mut cost) = (0usize, 0usize, 0.0);
    let mut tokens = vec![0u64; k];
    let mut answered = vec![0usize; k];
    for per in answers {
        let mut chosen = None;
        for (j, (a, c)) in per.iter().enumerate() {
            tokens[j] += a.tokens;
            cost += a.tokens as f64 * prices[j] / 1000.0;
            let last = j + 1 == k;
            let pass = !a.failed && (last || judge(&cfg, c).is_none());
            if pass {
                chosen = Some(j);
                break;
            }
        }
        if per.first().is_some_and(|_| chosen != Some(0)) {
            escalated += 1;
        }
        if let Some(j) = chosen {
            answered[j] += 1;
            correct += usize::from(per[j].0.correct);
        }
    }
    let n = answers.len().max(1) as f64;
    Row {
        threshold,
        accuracy: correct as f64 / n,
        escalation_rate: escalated as f64 / n,
        cost,
        tokens,
        answered,
    }
}

/// The report as a table.
pub fn render(r: &Report) -> String {
    let mut s = format!(
        "route `{}`: {} prompts; targets: {}\n",
        r.route,
        r.prompts,
        r.targets
            .iter()
            .zip(&r.target_accuracy)
            .map(|(t, a)| format!("{t} (alone: accuracy {a:.3})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s.push_str(&format!(
        "{:>18} {:>9} {:>11} {:>10} {:>18} {:>18}\n",
        "min_mean_logprob", "accuracy", "escalation", "cost", "answered", "tokens"
    ));
    for row in &r.rows {
        let t = match row.threshold {
            Some(t) => format!("{t}"),
            None => "(configured)".into(),
        };
        let join = |v: Vec<String>| v.join("/");
        s.push_str(&format!(
            "{:>18} {:>9.3} {:>11.3} {:>10.4} {:>18} {:>18}\n",
            t,
            row.accuracy,
            row.escalation_rate,
            row.cost,
            join(row.answered.iter().map(|x| x.to_string()).collect()),
            join(row.tokens.iter().map(|x| x.to_string()).collect()),
        ));
    }
    s
}

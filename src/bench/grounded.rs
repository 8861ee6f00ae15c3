//! An input-grounded workload for speculative decoding (`flare bench throughput --dataset
//! grounded`): the answer quotes, rewrites or edits text given in the prompt, as in code
//! editing, summarizing with quotes or RAG answers, so prompt lookup can find it.
//!
//! Built in (no download): a few paragraphs and code snippets written for this purpose, each
//! paired with several instructions, rendered with the model's chat template.

use super::dataset::SampleRequest;
use super::error::{BenchError, Result};
use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::tokenizer::Tokenizer;

const TEXTS: &[&str] = &[
    "The old lighthouse stood at the edge of the cliff for more than two hundred years. Every night its keeper climbed the narrow stairs, trimmed the wick and polished the great lens until it shone. Ships passing in the dark saw the beam sweep across the water and knew that the rocks were near. When the keeper grew old, the town installed an electric lamp, and the stairs were climbed only once a month to check the wiring.",
    "To make a simple bread, mix five hundred grams of flour with ten grams of salt and seven grams of dry yeast. Add three hundred and fifty millilitres of warm water and knead the dough for ten minutes, until it is smooth and elastic. Let it rise in a covered bowl for one hour, shape it into a loaf, let it rise again for forty minutes, and bake it at two hundred and twenty degrees for thirty minutes.",
    "The meeting is moved from Tuesday to Thursday at ten in the morning. Please bring the quarterly report, the budget for the new office and the list of open positions. Anna will present the results of the customer survey, and Mark will explain the changes to the delivery schedule. If you cannot attend, send your questions to the team by Wednesday evening.",
    "Rivers begin as small streams high in the mountains, where rain and melting snow collect. As they flow downhill they join other streams and grow wider and deeper. In the lowlands they slow down, bend into wide curves and drop the sand and mud they carried. Near the sea many rivers split into several branches and form a delta, where the land is flat and very fertile.",
];

const CODE: &[&str] = &[
    "def average(values):\n    total = 0\n    count = 0\n    for value in values:\n        total += value\n        count += 1\n    if count == 0:\n        return 0\n    return total / count\n\n\ndef largest(values):\n    best = None\n    for value in values:\n        if best is None or value > best:\n            best = value\n    return best\n",
    "fn parse_line(line: &str) -> Option<(String, u32)> {\n    let mut parts = line.split(',');\n    let name = parts.next()?.trim().to_string();\n    let age = parts.next()?.trim().parse().ok()?;\n    Some((name, age))\n}\n\nfn parse_all(text: &str) -> Vec<(String, u32)> {\n    text.lines().filter_map(parse_line).collect()\n}\n",
    "function formatPrice(amount, currency) {\n  const rounded = Math.round(amount * 100) / 100;\n  if (currency === 'EUR') {\n    return rounded.toFixed(2) + ' EUR';\n  }\n  return '$' + rounded.toFixed(2);\n}\n\nfunction totalPrice(items) {\n  let sum = 0;\n  for (const item of items) {\n    sum += item.price * item.quantity;\n  }\n  return sum;\n}\n",
];

const TEXT_TASKS: &[&str] = &[
    "Repeat the following text exactly, word for word:\n\n{}",
    "Rewrite the following text with every sentence on its own line, without changing any words:\n\n{}",
    "Copy the following text and then add one sentence at the end that summarizes it:\n\n{}",
];

const CODE_TASKS: &[&str] = &[
    "Add a short comment above each function in this code and return the whole code:\n\n{}",
    "Rename the variable `total` to `sum_of_values` (or, if there is none, rename the first function to `run`) and return the whole edited code:\n\n{}",
    "Return this code unchanged, but with four spaces of indentation replaced by two where it applies:\n\n{}",
];

/// `num_prompts` requests cycling through every (instruction, text) pair, chat-templated
/// (plain text for a model without a chat template, e.g. random weights of a preset).
pub fn grounded_requests(
    tok: &Tokenizer,
    num_prompts: usize,
    output_len: usize,
) -> Result<Vec<SampleRequest>> {
    let template = ChatTemplate::from_tokenizer(tok)
        .map_err(|e| BenchError::Config(format!("grounded dataset: chat template: {e}")))?;
    let mut users = Vec::new();
    for task in TEXT_TASKS {
        users.extend(TEXTS.iter().map(|t| task.replace("{}", t)));
    }
    for task in CODE_TASKS {
        users.extend(CODE.iter().map(|c| task.replace("{}", c)));
    }
    (0..num_prompts)
        .map(|i| {
            let user = &users[i % users.len()];
            let prompt = match &template {
                Some(t) => t
                    .render(&[ChatMessage::new("user", user)], true)
                    .map_err(|e| BenchError::Config(format!("grounded dataset: {e}")))?,
                None => format!("{user}\n\n"),
            };
            let prompt_ids = tok.encode(&prompt, false)?;
            Ok(SampleRequest {
                prompt,
                prompt_ids,
                expected_output_len: output_len,
            })
        })
        .collect()
}

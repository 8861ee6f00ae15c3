//! Fuzz target `template`: a conversation decoded from the bytes, rendered by a chat template.
//! Rendering may refuse (a template's `raise_exception`) but never panics, and repeats itself.
//! ChatML's output is checked against the format's definition, written out here: each message
//! as `<|im_start|>{role}\n{content}<|im_end|>\n`, then the generation prompt.
//!
//! Bytes: the first picks the template (low bits), whether the generation prompt is added
//! (0x10) and whether tools are passed (0x20). The rest splits at 0xFF (never in UTF-8) into
//! messages: a message's first byte picks its role (and, with 0x80, a tool call on an assistant
//! message), the remainder is its content (lossy UTF-8).

use std::sync::OnceLock;

use serde_json::json;

use crate::chat_template::{ChatMessage, ChatTemplate};

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
/// SmolLM2's ChatML with Hermes-style tools (tests/fixtures/hermes_tools.jinja).
const HERMES: &str = include_str!("../../tests/fixtures/hermes_tools.jinja");

/// Roles a message may get: the known ones, and ones templates do not expect.
const ROLES: [&str; 7] = [
    "system",
    "user",
    "assistant",
    "tool",
    "developer",
    "ipython",
    "",
];

fn templates() -> &'static [(&'static str, ChatTemplate)] {
    static T: OnceLock<Vec<(&'static str, ChatTemplate)>> = OnceLock::new();
    T.get_or_init(|| {
        [("chatml", CHATML), ("hermes", HERMES)]
            .into_iter()
            .map(|(name, src)| {
                let t = ChatTemplate::new(src, "<|im_start|>", "<|im_end|>")
                    .expect("the fixture templates compile");
                (name, t)
            })
            .collect()
    })
}

/// ChatML by its definition.
fn chatml_reference(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|im_start|>");
        out.push_str(&m.role);
        out.push('\n');
        out.push_str(m.content.as_deref().unwrap_or_default());
        out.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

/// The conversation the bytes describe; tool calls only where `calls` allows them.
fn messages(data: &[u8], calls: bool) -> Vec<ChatMessage> {
    data.split(|&b| b == 0xFF)
        .filter_map(|field| {
            let (&head, text) = field.split_first()?;
            let role = ROLES[(head & 0x7F) as usize % ROLES.len()];
            let content = String::from_utf8_lossy(text).into_owned();
            let mut m = ChatMessage::new(role, content.clone());
            if calls && head & 0x80 != 0 {
                match role {
                    "assistant" => {
                        m.tool_calls = Some(vec![json!({
                            "id": "call_0",
                            "type": "function",
                            "function": {"name": content, "arguments": {"text": content}},
                        })]);
                        m.content = None;
                    }
                    "tool" => m.tool_call_id = Some("call_0".into()),
                    _ => {}
                }
            }
            Some(m)
        })
        .collect()
}

pub fn fuzz(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let all = templates();
    let (name, template) = &all[(head & 0x0F) as usize % all.len()];
    let add_generation_prompt = head & 0x10 != 0;
    let tools = (head & 0x20 != 0).then(|| {
        json!([{"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }}])
    });
    let chatml = *name == "chatml";
    let msgs = messages(rest, !chatml);
    let Ok(text) = template.render_with_tools(&msgs, tools.as_ref(), add_generation_prompt) else {
        return;
    };
    let again = template
        .render_with_tools(&msgs, tools.as_ref(), add_generation_prompt)
        .expect("a second render of the same conversation succeeds");
    assert_eq!(text, again, "{name}: two renders differ");
    if chatml {
        assert_eq!(
            text,
            chatml_reference(&msgs, add_generation_prompt),
            "ChatML render differs from its definition"
        );
    }
}

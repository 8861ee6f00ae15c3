//! Renders Hugging Face chat templates (Jinja) into prompt text with minijinja.
//!
//! HF renders with Python's jinja2 and `trim_blocks`/`lstrip_blocks` on, and templates call
//! Python string and dict methods (`.strip()`, `.items()`), `raise_exception`, `strftime_now` and
//! `tojson`. minijinja-contrib's pycompat supplies the methods; the functions are registered
//! here, and `tojson` is replaced because minijinja's escapes HTML characters and uses compact
//! separators where Python's `json.dumps` writes `", "` and `": "`. minijinja is built with
//! `loop_controls` (HF enables jinja2's loopcontrols) and `preserve_order` (Python dicts keep
//! insertion order, which `.items()` and `tojson` show).

use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::tokenizer::Tokenizer;

const TEMPLATE_NAME: &str = "chat_template";

/// Errors from compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("invalid chat template: {0:#}")]
    Syntax(#[source] Error),
    #[error("rendering chat template: {0:#}")]
    Render(#[source] Error),
}

/// One message of a conversation, as chat templates see it (transformers' message dicts:
/// absent fields are left out, so templates can test `'tool_calls' in message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// None (null) only for an assistant message that is all tool calls.
    pub content: Option<String>,
    /// `[{"id", "type": "function", "function": {"name", "arguments": {...}}}]`, arguments as
    /// an object as HF templates expect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` message: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Some(content.into()),
            tool_calls: None,
            tool_call_id: None,
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template with the special-token strings it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts templates see under those names.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.into())
            .map_err(ChatTemplateError::Syntax)?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The tokenizer's own template, if it has one.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Option<Self>, ChatTemplateError> {
        let Some(source) = &tokenizer.chat_template else {
            return Ok(None);
        };
        let bos = tokenizer.bos_token.clone().unwrap_or_default();
        let eos = tokenizer.eos_token.clone().unwrap_or_default();
        Self::new(source.clone(), bos, eos).map(Some)
    }

    /// Renders a conversation; `add_generation_prompt` appends the opening of the assistant's
    /// turn. The result usually holds the BOS text: encode it without adding special tokens.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// Like [`render`](Self::render), with OpenAI-style tool definitions as `tools`.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(ChatTemplateError::Render)?;
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => tools.map(Value::from_serialize).unwrap_or(Value::from(())),
        };
        template.render(ctx).map_err(ChatTemplateError::Render)
    }
}

/// Templates call this to reject conversations they cannot format.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// The local time in strftime format, as transformers provides it.
fn strftime_now(format: String) -> Result<String, Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("invalid strftime format {format:?}"),
        )
    })?;
    Ok(out)
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`.
fn tojson(value: Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(usize::try_from(v)?),
        None => None,
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let mut out = String::new();
    PyJson {
        indent,
        sort_keys,
        ensure_ascii,
    }
    .write(&mut out, &value, 0)?;
    Ok(Value::from_safe_string(out))
}

/// Writes values the way Python's `json.dumps` does.
struct PyJson {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJson {
    fn write(&self, out: &mut String, value: &Value, depth: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&python_number(value)),
            ValueKind::String => self.write_str(out, value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container(out, '[', ']', &items, depth, |out, item| {
                    self.write(out, item, depth + 1)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.write_container(out, '{', '}', &keys, depth, |out, key| {
                    match key.as_str() {
                        Some(k) => self.write_str(out, k),
                        None => self.write_str(out, &key.to_string()),
                    }
                    out.push_str(": ");
                    self.write(out, &value.get_item(key)?, depth + 1)
                })?;
            }
            _ => self.write_str(out, &value.to_string()),
        }
        Ok(())
    }

    fn write_container(
        &self,
        out: &mut String,
        open: char,
        close: char,
        items: &[Value],
        depth: usize,
        mut write_item: impl FnMut(&mut String, &Value) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (i, item) in items.iter().enumerate() {
            match self.indent {
                Some(n) => {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push('\n');
                    out.push_str(&" ".repeat(n * (depth + 1)));
                }
                None if i > 0 => out.push_str(", "),
                None => {}
            }
            write_item(out, item)?;
        }
        if let Some(n) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
        out.push(close);
        Ok(())
    }

    fn write_str(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's `repr` of a number: integers as they are, floats always with a dot or exponent.
fn python_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        let s = f.to_string();
        if s.contains(['.', 'e', 'E']) {
            s
        } else {
            s + ".0"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, exactly as its GGUF stores it in `tokenizer.chat_template`.
    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// A Llama-3.x Instruct template (the 3.1/3.2 text: `strftime_now` date, system message
    /// extraction with `|trim`, tools in the first user message with `tojson(indent=4)`), plus a
    /// role check with `raise_exception`.
    const LLAMA3_TEMPLATE: &str = r#"{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant', 'ipython', 'tool'] %}
        {{- raise_exception("Unsupported role: " + message['role']) }}
    {%- endif %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- else %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {{- message.content }}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#;

    fn smollm2() -> ChatTemplate {
        ChatTemplate::new(SMOLLM2_TEMPLATE, "<|im_start|>", "<|im_end|>").unwrap()
    }

    fn llama3() -> ChatTemplate {
        ChatTemplate::new(LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>").unwrap()
    }

    fn today() -> String {
        chrono::Local::now().format("%d %b %Y").to_string()
    }

    #[test]
    fn smollm2_adds_default_system_prompt() {
        let out = smollm2()
            .render(&[ChatMessage::user("What is 2+2?")], true)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn smollm2_with_system_message_and_history() {
        let messages = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello!"),
            ChatMessage::user("Bye"),
        ];
        let out = smollm2().render(&messages, false).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        );
        assert!(!out.contains("SmolLM"));
    }

    #[test]
    fn llama3_renders_exact_prompt_with_todays_date() {
        let messages = [
            ChatMessage::system("  You are a pirate.\n"),
            ChatMessage::user(" Hi there "),
            ChatMessage::assistant("Arr!"),
            ChatMessage::user("Bye"),
        ];
        let out = llama3().render(&messages, true).unwrap();
        let expected = format!(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
             Cutting Knowledge Date: December 2023\nToday Date: {}\n\n\
             You are a pirate.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nArr!<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n",
            today()
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn llama3_tools_use_python_json_layout() {
        let tools = serde_json::json!([{
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city, \"now\"",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"]
                }
            }
        }]);
        let out = llama3()
            .render_with_tools(
                &[ChatMessage::user("Weather in Zürich?")],
                Some(&tools),
                true,
            )
            .unwrap();
        let expected = format!(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
             Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: {}\n\n\
             <|eot_id|><|start_header_id|>user<|end_header_id|>\n\n\
             Given the following functions, please respond with a JSON for a function call \
             with its proper arguments that best answers the given prompt.\n\n\
             Respond in the format {{\"name\": function name, \"parameters\": dictionary of \
             argument name and its value}}.Do not use variables.\n\n{}\n\n\
             Weather in Zürich?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            today(),
            r#"{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city, \"now\"",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {
                    "type": "string"
                }
            },
            "required": [
                "city"
            ]
        }
    }
}"#
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn raise_exception_becomes_an_error_with_its_message() {
        let err = llama3()
            .render(&[ChatMessage::new("narrator", "Once upon a time")], false)
            .unwrap_err();
        assert!(matches!(err, ChatTemplateError::Render(_)));
        assert!(
            err.to_string().contains("Unsupported role: narrator"),
            "{err}"
        );
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        assert!(t
            .render(&[], false)
            .unwrap_err()
            .to_string()
            .contains("no system role"));
    }

    #[test]
    fn shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
        assert!(matches!(err, ChatTemplateError::Syntax(_)));
    }

    #[test]
    fn python_methods_and_loop_controls() {
        let source = "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}\
                      {{ m.content.strip().upper() }}|{{ m.content.startswith(' a') }}|\
                      {% for k, v in m.items() %}{{ k }}={{ v|trim }};{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(source, "", "").unwrap();
        let out = t
            .render(
                &[ChatMessage::system("x"), ChatMessage::user(" ab ")],
                false,
            )
            .unwrap();
        // Booleans print as Python does.
        assert_eq!(out, "AB|True|role=user;content=ab;");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ {'b': [1, 2.5, 3.0, none, true], 'a': 'é\"<&>\\n'} | tojson }}|\
             {{ [] | tojson(indent=2) }}|{{ {'z': 1, 'a': 2} | tojson(sort_keys=true) }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            r#"{"b": [1, 2.5, 3.0, null, true], "a": "é\"<&>\n"}|[]|{"a": 2, "z": 1}"#
        );
    }

    #[test]
    fn strftime_now_and_bos_eos_are_available() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{{ strftime_now('%Y') }}{{ eos_token }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let year = chrono::Local::now().format("%Y").to_string();
        assert_eq!(t.render(&[], false).unwrap(), format!("<s>{year}</s>"));
    }

    #[test]
    fn from_tokenizer_uses_its_template_and_tokens() {
        let mut tok = Tokenizer::new(tokenizers::Tokenizer::new(
            tokenizers::models::bpe::BPE::default(),
        ));
        assert!(ChatTemplate::from_tokenizer(&tok).unwrap().is_none());
        tok.chat_template = Some(SMOLLM2_TEMPLATE.into());
        tok.bos_token = Some("<|im_start|>".into());
        let t = ChatTemplate::from_tokenizer(&tok).unwrap().unwrap();
        assert!(t
            .render(&[ChatMessage::user("x")], false)
            .unwrap()
            .contains("SmolLM"));
    }
}

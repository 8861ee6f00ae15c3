//! Renders a model's own Hugging Face chat template (Jinja) with minijinja, HF-compatible.

use chrono::Local;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

/// One message of a conversation, as OpenAI and HF templates see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("invalid chat template: {0}")]
    Invalid(String),
    /// The template refused the conversation (`raise_exception`) or failed while rendering.
    #[error("chat template error: {0}")]
    Render(String),
}

/// A compiled template plus the special-token strings HF passes to it.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> String {
    Local::now().format(&format).to_string()
}

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        // HF renders with trim_blocks and lstrip_blocks, and Python string methods.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| ChatTemplateError::Invalid(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
        })
    }

    /// The prompt text for `messages`; `add_generation_prompt` opens the assistant's turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let tpl = self
            .env
            .get_template(NAME)
            .map_err(|e| ChatTemplateError::Invalid(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
            tools => Value::UNDEFINED,
        };
        tpl.render(ctx).map_err(|e| match e.kind() {
            ErrorKind::InvalidOperation => {
                ChatTemplateError::Render(e.detail().unwrap_or("").to_string())
            }
            _ => ChatTemplateError::Render(format!("{e:#}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as its GGUF and tokenizer_config.json carry it.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// Llama-3-style template: bos, header ids, `| trim`, raise_exception on bad roles.
    const LLAMA3: &str = "{{- bos_token }}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{{- \"Today Date: \" + strftime_now(\"%d %b %Y\") + \"\\n\\n\" }}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n{%- for message in messages %}\n    {%- if message.role not in ['user', 'assistant'] %}\n        {{- raise_exception('Conversation roles must be user or assistant') }}\n    {%- endif %}\n    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n";

    #[test]
    fn smollm2_adds_its_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM2, None, Some("<|im_end|>".into())).unwrap();
        let got = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let got = t
            .render(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", "Hi"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn llama3_style_template_renders_date_trim_and_bos() {
        let t = ChatTemplate::new(LLAMA3, Some("<|begin_of_text|>".into()), None).unwrap();
        let msgs = [
            ChatMessage::new("system", "  Be brief. "),
            ChatMessage::new("user", " Hi\n"),
        ];
        let got = t.render(&msgs, true).unwrap();
        let date = Local::now().format("%d %b %Y").to_string();
        let want = format!(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nToday Date: {date}\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(got, want);
    }

    #[test]
    fn raise_exception_becomes_an_error_with_its_message() {
        let t = ChatTemplate::new(LLAMA3, None, None).unwrap();
        let err = t
            .render(&[ChatMessage::new("tool", "x")], true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Conversation roles must be user or assistant"),
            "{err}"
        );
    }

    #[test]
    fn python_string_methods_work() {
        let src = "{{ messages[0].content.strip().upper() }}{% if messages[0].content.startswith(' a') %}!{% endif %}{{ messages | tojson }}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let got = t
            .render(&[ChatMessage::new("user", " ab ")], false)
            .unwrap();
        assert!(got.starts_with("AB!["), "{got}");
        assert!(ChatTemplate::new("{% if %}", None, None).is_err());
    }
}

//! Structured-output request fields (OpenAI's `response_format`, vLLM's `structured_outputs` and
//! its older `guided_*` fields) into one [`Constraint`], compiled before the request is queued so
//! that a bad or too costly grammar is a 400 naming its field.

use serde_json::Value;

use super::error::ApiError;
use super::state::Loaded;
use super::wire::SamplingFields;
use crate::guidance::GuidanceError;
use crate::request::Constraint;

/// The constraint a request asks for and the field it came from (for error messages).
pub type Requested = Option<(Constraint, &'static str)>;

/// Reads the structured-output fields; at most one may ask for a constraint.
pub fn parse(f: &SamplingFields) -> Result<Requested, ApiError> {
    let mut found: Vec<(Constraint, &'static str)> = Vec::new();
    if let Some(rf) = &f.response_format {
        if let Some(c) = response_format(rf)? {
            found.push((c, "response_format"));
        }
    }
    if let Some(so) = &f.structured_outputs {
        if !so.is_null() {
            found.push((structured_outputs(so)?, "structured_outputs"));
        }
    }
    if let Some(j) = &f.guided_json {
        found.push((json_schema(j, "guided_json")?, "guided_json"));
    }
    if let Some(r) = &f.guided_regex {
        found.push((Constraint::Regex(r.clone()), "guided_regex"));
    }
    if let Some(c) = &f.guided_choice {
        found.push((choice(c.clone(), "guided_choice")?, "guided_choice"));
    }
    if let Some(g) = &f.guided_grammar {
        found.push((Constraint::Lark(g.clone()), "guided_grammar"));
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(_, p)| *p).collect();
        return Err(ApiError::invalid(
            found[1].1,
            format!(
                "Only one structured-output constraint may be given; got {}.",
                names.join(" and ")
            ),
        ));
    }
    let requested = found.pop();
    if let Some((_, param)) = &requested {
        if f.min_tokens.is_some_and(|m| m > 0) {
            return Err(ApiError::invalid(
                "min_tokens",
                format!("`min_tokens` cannot be combined with `{param}`: the grammar decides where the output ends."),
            ));
        }
    }
    Ok(requested)
}

/// Compiles the constraint (or finds it in the grammar cache) on a worker of its own, under the
/// grammar time limit.
pub fn compile(loaded: &Loaded, requested: &Requested) -> Result<(), ApiError> {
    let Some((c, param)) = requested else {
        return Ok(());
    };
    let guidance = loaded
        .guidance
        .as_ref()
        .map_err(|e| ApiError::invalid(param, e.clone()))?;
    guidance.compile_within_limit(c).map_err(|e| match e {
        GuidanceError::Invalid(msg) => {
            ApiError::invalid(param, format!("Invalid {} in `{param}`: {msg}", kind(c)))
        }
        other => ApiError::invalid(param, format!("`{param}`: {other}")),
    })
}

fn kind(c: &Constraint) -> &'static str {
    match c {
        Constraint::JsonSchema(_) | Constraint::JsonObject => "JSON schema",
        Constraint::Regex(_) => "regular expression",
        Constraint::Choice(_) => "choice",
        Constraint::Lark(_) => "grammar",
    }
}

fn response_format(rf: &Value) -> Result<Option<Constraint>, ApiError> {
    const P: &str = "response_format";
    if rf.is_null() {
        return Ok(None);
    }
    let kind = rf.get("type").and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid(
            P,
            "`response_format` must be an object with a string `type`.",
        )
    })?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(Constraint::JsonObject)),
        "json_schema" => {
            let js = rf.get("json_schema").filter(|v| v.is_object()).ok_or_else(|| {
                ApiError::invalid(
                    "response_format.json_schema",
                    "`response_format.json_schema` must be an object with `name` and `schema`.",
                )
            })?;
            match js.get("schema") {
                Some(s) if !s.is_null() => {
                    json_schema(s, "response_format.json_schema.schema").map(Some)
                }
                // OpenAI allows a schema-less json_schema: any JSON object, as json_object.
                _ => Ok(Some(Constraint::JsonObject)),
            }
        }
        other => Err(ApiError::invalid(
            "response_format.type",
            format!("`response_format.type` must be `text`, `json_object` or `json_schema`; got `{other}`."),
        )),
    }
}

/// vLLM's `structured_outputs`: exactly one constraint key; keys that would change the output
/// and are not implemented are refused.
fn structured_outputs(so: &Value) -> Result<Constraint, ApiError> {
    const P: &str = "structured_outputs";
    let obj = so
        .as_object()
        .ok_or_else(|| ApiError::invalid(P, "`structured_outputs` must be an object."))?;
    let mut found = Vec::new();
    for (key, v) in obj {
        if v.is_null() {
            continue;
        }
        let param = format!("{P}.{key}");
        match key.as_str() {
            "json" => found.push(json_schema(v, &param)?),
            "regex" => found.push(Constraint::Regex(string(v, &param)?)),
            "grammar" => found.push(Constraint::Lark(string(v, &param)?)),
            "choice" => {
                let items: Vec<String> = serde_json::from_value(v.clone()).map_err(|_| {
                    ApiError::invalid(&param, format!("`{param}` must be a list of strings."))
                })?;
                found.push(choice(items, &param)?);
            }
            "json_object" => match v.as_bool() {
                Some(true) => found.push(Constraint::JsonObject),
                Some(false) => {}
                None => {
                    return Err(ApiError::invalid(
                        &param,
                        format!("`{param}` must be a boolean."),
                    ))
                }
            },
            // Engine selection hints that do not change the output.
            "backend" | "disable_fallback" | "disable_any_whitespace"
            | "disable_additional_properties" | "_backend" | "_backend_was_auto" => {}
            other => {
                return Err(ApiError::invalid(
                    &param,
                    format!("`{P}.{other}` is not supported (supported: json, regex, choice, grammar, json_object)."),
                ))
            }
        }
    }
    match found.len() {
        1 => Ok(found.pop().expect("one")),
        0 => Err(ApiError::invalid(
            P,
            "`structured_outputs` needs one of json, regex, choice, grammar or json_object.",
        )),
        _ => Err(ApiError::invalid(
            P,
            "`structured_outputs` may set only one of json, regex, choice, grammar or json_object.",
        )),
    }
}

/// A schema given as an object, or as JSON text (vLLM accepts both).
fn json_schema(v: &Value, param: &str) -> Result<Constraint, ApiError> {
    let schema = match v {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .map_err(|e| ApiError::invalid(param, format!("`{param}` is not valid JSON: {e}")))?,
        other => other.clone(),
    };
    if !schema.is_object() && !schema.is_boolean() {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must be a JSON schema object."),
        ));
    }
    Ok(Constraint::JsonSchema(schema))
}

fn choice(items: Vec<String>, param: &str) -> Result<Constraint, ApiError> {
    if items.is_empty() {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must not be empty."),
        ));
    }
    Ok(Constraint::Choice(items))
}

fn string(v: &Value, param: &str) -> Result<String, ApiError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| ApiError::invalid(param, format!("`{param}` must be a string.")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> SamplingFields {
        serde_json::from_value(v).unwrap()
    }

    fn parsed(v: Value) -> Result<Requested, ApiError> {
        parse(&fields(v))
    }

    #[test]
    fn every_spelling_maps_to_one_constraint() {
        let schema = json!({"type": "object"});
        let cases = [
            (json!({"response_format": {"type": "text"}}), None),
            (
                json!({"response_format": {"type": "json_object"}}),
                Some(Constraint::JsonObject),
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}}),
                Some(Constraint::JsonSchema(schema.clone())),
            ),
            (
                json!({"structured_outputs": {"json": schema.to_string()}}),
                Some(Constraint::JsonSchema(schema.clone())),
            ),
            (
                json!({"structured_outputs": {"regex": "a+"}}),
                Some(Constraint::Regex("a+".into())),
            ),
            (
                json!({"structured_outputs": {"choice": ["a", "b"]}}),
                Some(Constraint::Choice(vec!["a".into(), "b".into()])),
            ),
            (
                json!({"structured_outputs": {"grammar": "start: \"a\""}}),
                Some(Constraint::Lark("start: \"a\"".into())),
            ),
            (
                json!({"structured_outputs": {"json_object": true}}),
                Some(Constraint::JsonObject),
            ),
            (
                json!({"guided_json": schema}),
                Some(Constraint::JsonSchema(schema.clone())),
            ),
            (
                json!({"guided_regex": "[0-9]+"}),
                Some(Constraint::Regex("[0-9]+".into())),
            ),
            (
                json!({"guided_choice": ["x"]}),
                Some(Constraint::Choice(vec!["x".into()])),
            ),
            (
                json!({"guided_grammar": "start: \"a\""}),
                Some(Constraint::Lark("start: \"a\"".into())),
            ),
            (json!({}), None),
        ];
        for (body, want) in cases {
            let got = parsed(body.clone()).unwrap().map(|(c, _)| c);
            assert_eq!(got, want, "{body}");
        }
    }

    #[test]
    fn conflicts_and_unsupported_keys_are_refused_by_name() {
        for (body, param) in [
            (
                json!({"guided_regex": "a", "guided_choice": ["a"]}),
                "guided_choice",
            ),
            (
                json!({"response_format": {"type": "xml"}}),
                "response_format.type",
            ),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
            ),
            (
                json!({"structured_outputs": {"structural_tag": "{}"}}),
                "structured_outputs.structural_tag",
            ),
            (
                json!({"structured_outputs": {"regex": "a", "choice": ["a"]}}),
                "structured_outputs",
            ),
            (json!({"structured_outputs": {}}), "structured_outputs"),
            (json!({"guided_json": "{not json"}), "guided_json"),
            (json!({"guided_choice": []}), "guided_choice"),
            (json!({"guided_regex": "a", "min_tokens": 3}), "min_tokens"),
        ] {
            match parsed(body.clone()) {
                Err(ApiError::InvalidParam { param: Some(p), .. }) => {
                    assert_eq!(p, param, "{body}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}

//! A pipeline's run-configuration form (the draft 2020-12 JSON Schema an install normalises):
//! applying its defaults, resolving its `x-pirus-enum` markers, validating a configuration
//! with every problem named by its field, and typing `key=value` pairs by the form. The runner
//! validates every submission with [`validate`]; the `pirus` CLI runs the same function before
//! it submits, so a user reads the server's own messages without a round trip.
//!
//! Depends on (within Pirus): nothing. Never on: pirus-db, pirus-server, pirus-lxd,
//! pirus-auth, pirus-catalogue, pirus-runner.

use serde_json::{Map, Value};

/// A configuration the form refuses: the field (`config_json`, `config_json.threads`) and
/// every problem found, the first one's field leading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl Problem {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why [`validate`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The configuration: the caller's to fix.
    Config(Problem),
    /// The form itself does not compile (an install checks it does, so this is a fault).
    Form(String),
}

/// The values the `x-pirus-enum` markers stand for: `input_files` (the run's input names) and
/// `databases` (the node's reference databases). `None` leaves that marker unconstrained (the
/// CLI does not know a node's databases; the runner checks them).
#[derive(Clone, Copy, Debug, Default)]
pub struct Enums<'a> {
    pub input_files: Option<&'a [String]>,
    pub databases: Option<&'a [String]>,
}

/// Parses `config_json` (empty: `{}`), applies the form's defaults, resolves its dynamic
/// enums, and validates; answers the configuration as it will run.
pub fn validate(config_json: &str, form: &Value, enums: Enums<'_>) -> Result<Value, Invalid> {
    let mut config: Value = if config_json.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(config_json).map_err(|e| {
            Invalid::Config(Problem::new(
                "config_json",
                format!("is not valid JSON: {e}"),
            ))
        })?
    };
    if !config.is_object() {
        return Err(Invalid::Config(Problem::new(
            "config_json",
            "must be a JSON object",
        )));
    }
    let mut form = form.clone();
    resolve_enums(&mut form, enums);
    apply_defaults(&form, &mut config);

    let validator = jsonschema::draft202012::new(&form)
        .map_err(|e| Invalid::Form(format!("the pipeline's form does not compile: {e}")))?;
    let problems: Vec<Problem> = validator
        .iter_errors(&config)
        .map(|e| {
            let path = e.instance_path().to_string();
            let field = if path.is_empty() {
                "config_json".to_owned()
            } else {
                format!("config_json{}", path.replace('/', "."))
            };
            Problem::new(field, e.to_string())
        })
        .collect();
    if let Some((first, rest)) = problems.split_first() {
        let mut message = first.message.clone();
        for other in rest {
            message.push_str("; ");
            message.push_str(&other.to_string());
        }
        return Err(Invalid::Config(Problem::new(first.field.clone(), message)));
    }
    Ok(config)
}

/// Replaces `x-pirus-enum` markers by real enums (or by nothing, for a source not given).
fn resolve_enums(schema: &mut Value, enums: Enums<'_>) {
    match schema {
        Value::Object(map) => {
            if let Some(source) = map.remove("x-pirus-enum") {
                let values = match source.as_str() {
                    Some("input_files") => enums.input_files,
                    _ => enums.databases,
                };
                if let Some(values) = values {
                    map.insert(
                        "enum".to_owned(),
                        values.iter().cloned().map(Value::String).collect(),
                    );
                }
            }
            map.values_mut().for_each(|v| resolve_enums(v, enums));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| resolve_enums(v, enums)),
        _ => {}
    }
}

/// Fills absent properties with their `default`, recursively into objects.
fn apply_defaults(schema: &Value, value: &mut Value) {
    let (Some(properties), Some(object)) =
        (schema["properties"].as_object(), value.as_object_mut())
    else {
        return;
    };
    for (name, property) in properties {
        match object.get_mut(name) {
            Some(child) => apply_defaults(property, child),
            None => {
                if let Some(default) = property.get("default") {
                    object.insert(name.clone(), default.clone());
                }
            }
        }
    }
}

/// Sets `key=value` in `config`, the value typed by the form: a `key` with dots names a
/// nested property (`align.threads=4`); an integer, number or boolean property takes its
/// value parsed as one, an array or object one takes JSON (an array also `a,b,c`), a string
/// one the text as it is. A key the form does not know keeps its text (validation names it).
pub fn set_pair(config: &mut Map<String, Value>, form: &Value, pair: &str) -> Result<(), Problem> {
    let (key, text) = pair
        .split_once('=')
        .ok_or_else(|| Problem::new("--config", format!("'{pair}' is not key=value")))?;
    let path: Vec<&str> = key.split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(Problem::new(
            "--config",
            format!("'{key}' is not a property name"),
        ));
    }
    let field = format!("config_json.{key}");
    let mut schema = Some(form);
    for part in &path {
        schema = schema.and_then(|s| s["properties"].get(*part));
    }
    let value = typed(text, schema, &field)?;
    let mut object = config;
    for part in &path[..path.len() - 1] {
        let entry = object
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        object = entry.as_object_mut().ok_or_else(|| {
            Problem::new(
                field.clone(),
                format!("'{part}' is set already, and not as an object"),
            )
        })?;
    }
    object.insert(path[path.len() - 1].to_owned(), value);
    Ok(())
}

/// The JSON types a property's schema allows (`type` as a string or a list).
fn types(schema: &Value) -> Vec<&str> {
    match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn typed(text: &str, schema: Option<&Value>, field: &str) -> Result<Value, Problem> {
    let Some(schema) = schema else {
        return Ok(Value::String(text.to_owned()));
    };
    let allowed = types(schema);
    let is = |t: &str| allowed.contains(&t);
    if is("integer")
        && let Ok(n) = text.trim().parse::<i64>()
    {
        return Ok(Value::from(n));
    }
    if is("number")
        && let Ok(x) = text.trim().parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(x)
    {
        return Ok(Value::Number(n));
    }
    if is("boolean") {
        match text.trim() {
            "true" | "yes" | "on" | "1" => return Ok(Value::Bool(true)),
            "false" | "no" | "off" | "0" => return Ok(Value::Bool(false)),
            _ => {}
        }
    }
    if (is("array") || is("object"))
        && let Ok(v) = serde_json::from_str::<Value>(text)
        && (v.is_array() || v.is_object())
    {
        return Ok(v);
    }
    if is("array") {
        let items = &schema["items"];
        return text
            .split(',')
            .map(|item| typed(item.trim(), Some(items), field))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if allowed.is_empty() || is("string") {
        return Ok(Value::String(text.to_owned()));
    }
    Err(Problem::new(
        field,
        format!("'{text}' is not {}", allowed.join(" or ")),
    ))
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "additionalProperties": false,
            "required": ["threads"],
            "properties": {
                "threads": {"type": "integer", "minimum": 1, "maximum": 64, "default": 2},
                "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
                "ratio": {"type": "number"},
                "verbose": {"type": "boolean"},
                "samples": {"type": "array", "items": {"type": "integer"}},
                "align": {"type": "object", "properties": {"seed": {"type": "integer"}}},
                "input": {"x-pirus-enum": "input_files"},
                "reference": {"x-pirus-enum": "databases"}
            }
        })
    }

    fn enums<'a>(inputs: &'a [String], databases: &'a [String]) -> Enums<'a> {
        Enums {
            input_files: Some(inputs),
            databases: Some(databases),
        }
    }

    fn check(config: &str) -> Result<Value, Invalid> {
        validate(
            config,
            &form(),
            enums(&["reads.fq".into()], &["hg38".into()]),
        )
    }

    #[test]
    fn defaults_are_applied() {
        assert_eq!(check("{}").unwrap(), json!({"threads": 2, "mode": "fast"}));
        assert_eq!(check("").unwrap(), json!({"threads": 2, "mode": "fast"}));
        assert_eq!(check(r#"{"threads": 8}"#).unwrap()["threads"], 8);
    }

    #[test]
    fn every_kind_of_bad_config_names_its_field() {
        let cases = [
            (r#"{"threads": "many"}"#, "config_json.threads"),
            (r#"{"threads": 0}"#, "config_json.threads"),
            (r#"{"threads": 65}"#, "config_json.threads"),
            (r#"{"mode": "medium"}"#, "config_json.mode"),
            (r#"{"colour": "red"}"#, "config_json"),
            (r#"{"input": "other.fq"}"#, "config_json.input"),
            (r#"{"reference": "mm10"}"#, "config_json.reference"),
            ("{threads: 2", "config_json"),
            ("[1, 2]", "config_json"),
        ];
        for (config, field) in cases {
            match check(config) {
                Err(Invalid::Config(p)) => {
                    assert_eq!(p.field, field, "{config}: {}", p.message);
                    if config.contains("colour") {
                        assert!(p.message.contains("colour"), "{}", p.message);
                    }
                }
                other => panic!("{config} gave {other:?}"),
            }
        }
        assert!(check(r#"{"input": "reads.fq", "reference": "hg38"}"#).is_ok());
    }

    #[test]
    fn an_unknown_enum_source_is_left_unconstrained() {
        let only_inputs = Enums {
            input_files: Some(&[]),
            databases: None,
        };
        assert!(validate(r#"{"reference": "mm10"}"#, &form(), only_inputs).is_ok());
        let e = validate(r#"{"input": "x"}"#, &form(), only_inputs).unwrap_err();
        assert!(matches!(e, Invalid::Config(p) if p.field == "config_json.input"));
    }

    #[test]
    fn pairs_are_typed_by_the_form() {
        let mut config = Map::new();
        for pair in [
            "threads=4",
            "ratio=0.5",
            "verbose=yes",
            "samples=1,2,3",
            "mode=slow",
            "align.seed=7",
            "colour=red",
        ] {
            set_pair(&mut config, &form(), pair).unwrap();
        }
        assert_eq!(
            Value::Object(config),
            json!({"threads": 4, "ratio": 0.5, "verbose": true, "samples": [1, 2, 3],
                   "mode": "slow", "align": {"seed": 7}, "colour": "red"})
        );
        let mut config = Map::new();
        set_pair(&mut config, &form(), "samples=[4, 5]").unwrap();
        assert_eq!(config["samples"], json!([4, 5]));
        for (bad, field) in [
            ("threads=many", "config_json.threads"),
            ("verbose=maybe", "config_json.verbose"),
            ("samples=1,x", "config_json.samples"),
            ("threads", "--config"),
            ("a..b=1", "--config"),
        ] {
            let e = set_pair(&mut Map::new(), &form(), bad).unwrap_err();
            assert_eq!(e.field, field, "{bad}: {}", e.message);
        }
    }
}

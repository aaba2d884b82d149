//! The run-configuration form: a JSON Schema, normalised to draft 2020-12 at install
//! (CONTRACT §4).
//!
//! Draft-03 idioms of older packages are rewritten: a property's `"required": true` joins its
//! object's `required` list, `divisibleBy` becomes `multipleOf`, `"type": "any"` is dropped.
//! The legacy placeholder enums (`__PIRUS_INPUT_FILES__`, `__INPUTS_FILES__`,
//! `__PIRUS_DB_ALL__`, `__GENOMES_REFS__`) cannot be resolved before a run exists: they become
//! `"x-pirus-enum": "input_files" | "databases"`, which SubmitRun turns into a real `enum`.
//! An empty form means "no parameters". A top-level object without `additionalProperties`
//! gets `false`, so an unexpected config field is named back to the client.

use serde_json::{Map, Value, json};

pub(crate) const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// The vendor keyword that marks an enum resolved at submission.
pub(crate) const DYNAMIC_ENUM: &str = "x-pirus-enum";

/// A form with no parameters.
pub(crate) fn empty() -> Value {
    json!({"$schema": DRAFT_2020_12, "type": "object", "properties": {}, "additionalProperties": false})
}

/// Normalises `bytes` (the form file) or reports every problem found, prefixed `form.json`.
pub(crate) fn normalise(bytes: &[u8]) -> Result<Value, Vec<String>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(empty());
    }
    let mut schema: Value = serde_json::from_slice(bytes)
        .map_err(|e| vec![format!("form.json: is not valid JSON: {e}")])?;
    let Some(root) = schema.as_object_mut() else {
        return Err(vec![
            "form.json: must be a JSON object (a JSON Schema)".to_owned(),
        ]);
    };
    root.insert(
        "$schema".to_owned(),
        Value::String(DRAFT_2020_12.to_owned()),
    );
    root.entry("type")
        .or_insert_with(|| Value::String("object".to_owned()));
    if root.get("type").and_then(Value::as_str) == Some("object") {
        root.entry("additionalProperties")
            .or_insert(Value::Bool(false));
    }
    rewrite(&mut schema);

    let meta = jsonschema::draft202012::meta::validator();
    let problems: Vec<String> = meta
        .iter_errors(&schema)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_owned() } else { at };
            format!("form.json: {at}: {e}")
        })
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    // Compiling it finds what the meta-schema cannot (an invalid regex pattern, say).
    jsonschema::draft202012::new(&schema)
        .map_err(|e| vec![format!("form.json: {}: {e}", e.instance_path())])?;
    Ok(schema)
}

/// Rewrites draft-03 idioms, depth first.
fn rewrite(value: &mut Value) {
    match value {
        Value::Object(map) => {
            rewrite_keywords(map);
            for child in map.values_mut() {
                rewrite(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite),
        _ => {}
    }
}

fn rewrite_keywords(map: &mut Map<String, Value>) {
    if let Some(d) = map.remove("divisibleBy") {
        map.entry("multipleOf").or_insert(d);
    }
    match map.get("type") {
        Some(Value::String(t)) if t == "any" => {
            map.remove("type");
        }
        // Some legacy forms spell an enum field as `"type": "enum"`.
        Some(Value::String(t)) if t == "enum" => {
            map.remove("type");
        }
        Some(Value::Array(types)) if types.iter().any(|t| t == "any") => {
            map.remove("type");
        }
        _ => {}
    }
    if let Some(Value::String(placeholder)) = map.get("enum") {
        let source = match placeholder.as_str() {
            "__PIRUS_INPUT_FILES__" | "__INPUTS_FILES__" => Some("input_files"),
            "__PIRUS_DB_ALL__" | "__GENOMES_REFS__" | "__PIRUS_DB_REFS__" | "__PIRUS_DB_REF__" => {
                Some("databases")
            }
            _ => None,
        };
        if let Some(source) = source {
            map.remove("enum");
            map.insert(DYNAMIC_ENUM.to_owned(), Value::String(source.to_owned()));
        }
    }
    // Draft-03: a property says it is required; draft 4 on: its object lists it.
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        let mut required: Vec<String> = Vec::new();
        for (name, property) in properties.iter_mut() {
            if let Some(property) = property.as_object_mut()
                && let Some(Value::Bool(flag)) = property.get("required")
            {
                if *flag {
                    required.push(name.clone());
                }
                property.remove("required");
            }
        }
        if !required.is_empty() {
            let list = map
                .entry("required")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = list {
                for name in required {
                    if !list.iter().any(|v| v == &Value::String(name.clone())) {
                        list.push(Value::String(name));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_03_forms_are_normalised() {
        let form = br#"{
            "$schema": "http://json-schema.org/draft-03/schema#",
            "type": "object",
            "properties": {
                "threads": {"type": "integer", "required": true, "minimum": 1, "divisibleBy": 1},
                "reference": {"type": "string", "enum": "__GENOMES_REFS__", "required": false},
                "input": {"enum": "__PIRUS_INPUT_FILES__", "type": "any"},
                "note": {"type": "string"}
            }
        }"#;
        let schema = normalise(form).unwrap();
        assert_eq!(schema["$schema"], DRAFT_2020_12);
        assert_eq!(schema["required"], json!(["threads"]));
        assert_eq!(schema["additionalProperties"], json!(false));
        let p = &schema["properties"];
        assert_eq!(p["threads"]["multipleOf"], json!(1));
        assert!(p["threads"].get("required").is_none());
        assert_eq!(p["reference"][DYNAMIC_ENUM], "databases");
        assert!(p["input"].get("type").is_none());
        assert_eq!(p["input"][DYNAMIC_ENUM], "input_files");
    }

    #[test]
    fn empty_forms_mean_no_parameters() {
        assert_eq!(normalise(b"").unwrap(), empty());
        assert_eq!(normalise(b" \n\t").unwrap(), empty());
    }

    #[test]
    fn invalid_forms_are_reported() {
        assert!(normalise(b"{not json").unwrap_err()[0].contains("not valid JSON"));
        assert!(normalise(b"[1, 2]").unwrap_err()[0].contains("JSON object"));
        let bad = normalise(br#"{"properties": {"n": {"type": "integr"}, "m": {"minimum": "x"}}}"#)
            .unwrap_err();
        assert!(bad.len() >= 2, "{bad:?}");
        assert!(
            bad.iter().all(|p| p.starts_with("form.json: /properties/")),
            "{bad:?}"
        );
        let regex =
            normalise(br#"{"properties": {"s": {"type": "string", "pattern": "(unclosed"}}}"#);
        assert!(regex.is_err());
    }
}

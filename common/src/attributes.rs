//! Per-file attributes: values a job gives each file (the Python client's
//! `data` keys beside the paths, manifest columns beyond the first, inline
//! files' `attributes`), carried onto every row of that file as columns of
//! their own, so SQL can filter on them (`WHERE label = 'cat'`).
//!
//! A job declares the columns once (or they are inferred from the values);
//! each file's values are checked and normalized when the file is planned,
//! so a bad value fails that file with a reason instead of a whole write.

use std::collections::HashSet;

use arrow_schema::{DataType, Field, TimeUnit};
use serde_json::{Map, Value};

use crate::insert::{field_of, type_name, ColumnDef};
use crate::schema::table_schema;
use crate::{Error, Result};

/// The Arrow fields of attribute columns, checked: valid names, no name
/// twice, none of the columns sluice fills itself. All are nullable (a file
/// without a value gets null), except those declared required.
pub fn fields(columns: &[ColumnDef]) -> Result<Vec<Field>> {
    let base = table_schema();
    let mut seen = HashSet::new();
    columns
        .iter()
        .map(|c| {
            let field = field_of(c)?;
            if base.field_with_name(field.name()).is_ok() {
                return Err(Error::InvalidInput(format!(
                    "attribute `{}` has the name of a column sluice fills itself; rename it",
                    field.name()
                )));
            }
            if !seen.insert(field.name().clone()) {
                return Err(Error::InvalidInput(format!("attribute column `{}` is given twice", field.name())));
            }
            Ok(field.with_nullable(true))
        })
        .collect()
}

/// Column types for values that came without a declaration: booleans,
/// integers (64-bit), numbers (float64 when any is fractional), text,
/// JSON for objects and arrays, and for keys whose values disagree.
/// Columns come in the order keys are first seen (within one row, by
/// name); a key whose values are all null is text.
pub fn infer<'a>(rows: impl IntoIterator<Item = &'a Map<String, Value>>) -> Vec<ColumnDef> {
    let mut order: Vec<String> = Vec::new();
    let mut kinds: std::collections::HashMap<String, &'static str> = Default::default();
    for row in rows {
        for (key, value) in row {
            let kind = match value {
                Value::Null => continue,
                Value::Bool(_) => "bool",
                Value::Number(n) if n.is_i64() || n.is_u64() => "int64",
                Value::Number(_) => "float64",
                Value::String(_) => "string",
                Value::Array(_) | Value::Object(_) => "json",
            };
            let merged = match kinds.get(key.as_str()) {
                None => {
                    order.push(key.clone());
                    kind
                }
                Some(&have) if have == kind => kind,
                Some(&("int64" | "float64")) if matches!(kind, "int64" | "float64") => "float64",
                Some(_) => "json",
            };
            kinds.insert(key.clone(), merged);
        }
    }
    order
        .into_iter()
        .map(|name| {
            let ty = kinds.get(&name).copied().unwrap_or("string");
            ColumnDef { name, ty: ty.into(), required: false }
        })
        .collect()
}

/// Text columns named by a manifest's header (CSV columns beyond the first).
pub fn text_columns(names: &[String]) -> Vec<ColumnDef> {
    names.iter().map(|n| ColumnDef { name: n.clone(), ty: "string".into(), required: false }).collect()
}

/// Check one file's values against the job's attribute columns and give
/// them back normalized (compact JSON holding only what the column's Arrow
/// type decodes without fail: dates and timestamps as numbers, JSON values
/// as JSON text). `Err` is the reason the file fails.
pub fn normalize(columns: &[Field], values: &Map<String, Value>) -> std::result::Result<String, String> {
    let mut out = Map::with_capacity(values.len());
    for (key, value) in values {
        let Some(field) = columns.iter().find(|f| f.name() == key) else {
            let known: Vec<&str> = columns.iter().map(|f| f.name().as_str()).collect();
            return Err(format!(
                "attribute `{key}` is not a column of this job (columns: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ));
        };
        if value.is_null() {
            continue;
        }
        let v = coerce(field, value).map_err(|why| format!("attribute `{key}`: {why}"))?;
        out.insert(key.clone(), v);
    }
    Ok(Value::Object(out).to_string())
}

fn coerce(field: &Field, value: &Value) -> std::result::Result<Value, String> {
    let wrong = || format!("expected {}, got {}", type_name(field), short(value));
    if crate::schema::is_arrow_json(field) {
        return Ok(Value::String(crate::insert::json_text(value)));
    }
    let text = value.as_str().map(str::trim);
    Ok(match field.data_type() {
        DataType::Utf8 => match value {
            Value::String(s) => Value::String(s.clone()),
            Value::Number(_) | Value::Bool(_) => Value::String(value.to_string()),
            _ => return Err(wrong()),
        },
        DataType::Int64 | DataType::Int32 | DataType::Int16 => {
            let (lo, hi) = match field.data_type() {
                DataType::Int16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
                DataType::Int32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
                _ => (i64::MIN, i64::MAX),
            };
            let n = match (value, text) {
                (Value::Number(n), _) => n.as_i64(),
                (_, Some(t)) => t.parse::<i64>().ok(),
                _ => None,
            };
            match n {
                Some(n) if (lo..=hi).contains(&n) => Value::from(n),
                Some(n) => return Err(format!("{n} is out of range for {}", type_name(field))),
                None => return Err(wrong()),
            }
        }
        DataType::Float64 | DataType::Float32 => {
            let n = match (value, text) {
                (Value::Number(n), _) => n.as_f64(),
                (_, Some(t)) => t.parse::<f64>().ok().filter(|f| f.is_finite()),
                _ => None,
            };
            serde_json::Number::from_f64(n.ok_or_else(wrong)?).map(Value::Number).ok_or_else(wrong)?
        }
        DataType::Boolean => match (value, text.map(str::to_ascii_lowercase).as_deref()) {
            (Value::Bool(b), _) => Value::Bool(*b),
            (_, Some("true" | "t" | "yes" | "y" | "1")) => Value::Bool(true),
            (_, Some("false" | "f" | "no" | "n" | "0")) => Value::Bool(false),
            _ => return Err(wrong()),
        },
        DataType::Timestamp(TimeUnit::Millisecond, _) => match (value, text) {
            (Value::Number(n), _) if n.is_i64() => value.clone(),
            (_, Some(t)) => Value::from(parse_timestamp_ms(t).ok_or_else(wrong)?),
            _ => return Err(wrong()),
        },
        DataType::Date32 => match (value, text) {
            (Value::Number(n), _) if n.as_i64().is_some_and(|d| i32::try_from(d).is_ok()) => value.clone(),
            (_, Some(t)) => {
                let date = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").map_err(|_| wrong())?;
                Value::from((date - chrono::NaiveDate::default()).num_days())
            }
            _ => return Err(wrong()),
        },
        DataType::Binary => match text {
            Some(t) if t.len() % 2 == 0 && t.bytes().all(|b| b.is_ascii_hexdigit()) => Value::String(t.to_string()),
            _ => return Err(format!("expected hex-encoded bytes, got {}", short(value))),
        },
        other => return Err(format!("columns of type {other} cannot hold per-file values")),
    })
}

/// RFC 3339, or `YYYY-MM-DD[ HH:MM:SS[.fff]]` taken as UTC.
fn parse_timestamp_ms(t: &str) -> Option<i64> {
    if let Ok(ts) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(ts.timestamp_millis());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(ts) = chrono::NaiveDateTime::parse_from_str(t, format) {
            return Some(ts.and_utc().timestamp_millis());
        }
    }
    chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").ok().map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_millis())
}

fn short(value: &Value) -> String {
    let s = value.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn types_are_inferred_from_every_value() {
        let rows = [obj(json!({"label": "cat", "n": 1, "x": 1, "ok": true, "meta": {"a": 1}})), obj(json!({"n": 2, "x": 0.5, "mixed": 1})), obj(json!({"mixed": "one", "empty": null}))];
        let cols = infer(&rows);
        let got: Vec<(&str, &str)> = cols.iter().map(|c| (c.name.as_str(), c.ty.as_str())).collect();
        assert_eq!(got, [("label", "string"), ("meta", "json"), ("n", "int64"), ("ok", "bool"), ("x", "float64"), ("mixed", "json")]);
    }

    #[test]
    fn values_are_checked_and_normalized_per_column() {
        let cols = fields(&[
            ColumnDef { name: "label".into(), ty: "text".into(), required: false },
            ColumnDef { name: "n".into(), ty: "int32".into(), required: false },
            ColumnDef { name: "score".into(), ty: "float64".into(), required: false },
            ColumnDef { name: "ok".into(), ty: "bool".into(), required: false },
            ColumnDef { name: "at".into(), ty: "timestamp".into(), required: false },
            ColumnDef { name: "day".into(), ty: "date".into(), required: false },
            ColumnDef { name: "meta".into(), ty: "jsonb".into(), required: false },
        ])
        .unwrap();
        // CSV values are text: numbers, booleans and dates are parsed.
        let got = normalize(&cols, &obj(json!({"label": "cat", "n": "7", "score": "0.5", "ok": "yes", "at": "1970-01-01T00:00:01Z", "day": "1970-01-03", "meta": "{\"a\": 1}"}))).unwrap();
        let v: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v, json!({"label": "cat", "n": 7, "score": 0.5, "ok": true, "at": 1000, "day": 2, "meta": "{\"a\":1}"}));
        for (bad, want) in [
            (json!({"n": "seven"}), "attribute `n`: expected int32, got \"seven\""),
            (json!({"n": 3_000_000_000_i64}), "out of range"),
            (json!({"color": "red"}), "attribute `color` is not a column of this job"),
            (json!({"day": "yesterday"}), "attribute `day`: expected date"),
        ] {
            let err = normalize(&cols, &obj(bad)).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn names_sluice_fills_are_refused() {
        let err = fields(&[ColumnDef { name: "kind".into(), ty: "text".into(), required: false }]).unwrap_err();
        assert!(err.to_string().contains("`kind` has the name of a column sluice fills"), "{err}");
    }
}

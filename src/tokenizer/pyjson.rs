//! The `tojson` filter as `transformers` defines it for chat templates:
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
//!
//! Byte-exact with Python: `", "` and `": "` separators (`","` between items once `indent` is
//! set), map order kept, `/`, `<`, `>` and `&` unescaped (Jinja2's own `tojson` HTML-escapes),
//! floats in Python's repr (`1.0`, `1e-07`), non-string keys turned into strings.

use std::fmt::Write;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

use super::pyfmt::float_repr;

struct DumpOptions {
    ensure_ascii: bool,
    /// `None`: everything on one line; `Some(unit)`: one item per line, indented by `unit`.
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

/// minijinja filter: `{{ tool | tojson }}`, `{{ x | tojson(indent=4) }}`; also takes
/// `ensure_ascii`, `separators` and `sort_keys` keyword arguments.
pub(super) fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        // Python: an int indent is that many spaces (none for <= 0); a str is used verbatim.
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_owned(),
            None => " ".repeat(i64::try_from(v)?.max(0) as usize),
        }),
    };
    let (item_separator, key_separator) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(seps) => match <[String; 2]>::try_from(seps) {
            Ok([item, key]) => (item, key),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: `separators` must be a pair (item_separator, key_separator)",
                ))
            }
        },
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let opts = DumpOptions {
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        indent,
        item_separator,
        key_separator,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_value(value, &opts, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn not_serializable(value: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "tojson: object of kind {} is not JSON serializable",
            value.kind()
        ),
    )
}

fn write_value(
    value: &Value,
    opts: &DumpOptions,
    level: usize,
    out: &mut String,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(value, out)?,
        ValueKind::String => {
            write_string(value.as_str().unwrap_or_default(), opts.ensure_ascii, out)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(('[', ']'), &items, opts, level, out, |item, out| {
                write_value(item, opts, level + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((key_string(&key)?, item));
            }
            if opts.sort_keys {
                // Python compares str by code point; UTF-8 byte order is the same order.
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(
                ('{', '}'),
                &entries,
                opts,
                level,
                out,
                |(key, item), out| {
                    write_string(key, opts.ensure_ascii, out);
                    out.push_str(&opts.key_separator);
                    write_value(item, opts, level + 1, out)
                },
            )?;
        }
        _ => return Err(not_serializable(value)),
    }
    Ok(())
}

fn write_container<T>(
    (open, close): (char, char),
    items: &[T],
    opts: &DumpOptions,
    level: usize,
    out: &mut String,
    mut write_item: impl FnMut(&T, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(unit) = &opts.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(unit);
            }
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&opts.item_separator);
        }
        newline(out, level + 1);
        write_item(item, out)?;
    }
    newline(out, level);
    out.push(close);
    Ok(())
}

fn write_number(value: &Value, out: &mut String) -> Result<(), Error> {
    if value.is_integer() {
        let _ = write!(out, "{}", i128::try_from(value.clone())?);
    } else {
        let x = f64::try_from(value.clone())?;
        // Python's json spells the non-finite floats this way (not valid JSON, but it is what
        // `json.dumps` writes).
        out.push_str(&match x {
            x if x.is_nan() => "NaN".to_owned(),
            x if x == f64::INFINITY => "Infinity".to_owned(),
            x if x == f64::NEG_INFINITY => "-Infinity".to_owned(),
            x => float_repr(x),
        });
    }
    Ok(())
}

/// Python turns None/bool/number keys into strings; anything else is a TypeError.
fn key_string(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
        ValueKind::None => "null".to_owned(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_owned(),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(key, &mut s)?;
            s
        }
        _ => return Err(not_serializable(key)),
    })
}

fn write_string(s: &str, ensure_ascii: bool, out: &mut String) {
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
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
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

#[cfg(test)]
mod tests {
    use minijinja::Environment;

    use super::*;

    fn render(template: &str, value: serde_json::Value) -> Result<String, Error> {
        let mut env = Environment::new();
        env.add_filter("tojson", tojson);
        env.render_str(template, minijinja::context! { x => value })
    }

    #[test]
    fn matches_python_json_dumps_defaults() {
        let x = serde_json::json!({
            "name": "get_weather", "z": 1, "a": [1.0, 2.5, 1e-7, -3, null, true],
            "text": "中文 <b>&</b> it's \"q\" \\ \n\t\u{1}", "empty": {}, "list": []
        });
        // Expected output is what `json.dumps(x, ensure_ascii=False)` prints.
        let expected = r#"{"name": "get_weather", "z": 1, "a": [1.0, 2.5, 1e-07, -3, null, true], "text": "中文 <b>&</b> it's \"q\" \\ \n\t\u0001", "empty": {}, "list": []}"#;
        assert_eq!(render("{{ x | tojson }}", x).unwrap(), expected);
    }

    #[test]
    fn indent_and_other_options() {
        let x = serde_json::json!({"b": [1, {"c": "é"}], "a": {}});
        // json.dumps(x, ensure_ascii=False, indent=2)
        let expected =
            "{\n  \"b\": [\n    1,\n    {\n      \"c\": \"é\"\n    }\n  ],\n  \"a\": {}\n}";
        assert_eq!(
            render("{{ x | tojson(indent=2) }}", x.clone()).unwrap(),
            expected
        );
        // json.dumps(x, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
        let expected = r#"{"a":{},"b":[1,{"c":"\u00e9"}]}"#;
        let template = "{{ x | tojson(ensure_ascii=true, sort_keys=true, separators=[',', ':']) }}";
        assert_eq!(render(template, x).unwrap(), expected);
        assert_eq!(
            render("{{ x | tojson(ensure_ascii=true) }}", "😀".into()).unwrap(),
            r#""\ud83d\ude00""#
        );
    }

    #[test]
    fn unknown_arguments_and_undefined_values_are_errors() {
        assert!(render("{{ x | tojson(indnet=2) }}", 1.into()).is_err());
        assert!(render("{{ nothing | tojson }}", 1.into()).is_err());
    }
}

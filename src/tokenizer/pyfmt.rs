//! Python's text forms of values (`str()` / `repr()`), so a template prints what Jinja2 prints
//! under `transformers`: `None`, `True`, `1e-07`, `['a', {'b': 1}]` where minijinja would print
//! `none`, `true`, `0.0000001`, `["a", {"b": 1}]`.

use std::fmt::Write;

use minijinja::value::ValueKind;
use minijinja::{Error, Output, State, Value};

/// minijinja formatter for `{{ value }}`: Python `str(value)` for the kinds where it differs.
pub(super) fn python_formatter(
    out: &mut Output,
    state: &State,
    value: &Value,
) -> Result<(), Error> {
    let text = match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map => repr(value),
        ValueKind::Number if !value.is_integer() => repr(value),
        _ => return minijinja::escape_formatter(out, state, value),
    };
    out.write_str(&text).map_err(Error::from)
}

/// Python `repr(value)` (equal to `str(value)` for everything but strings).
pub(super) fn repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(value, &mut out);
    out
}

fn write_repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::None | ValueKind::Undefined => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(x) => out.push_str(&float_repr(x)),
            Err(_) => out.push_str(&value.to_string()),
        },
        ValueKind::String => str_repr(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(&item, out);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(&key, out);
                out.push_str(": ");
                write_repr(&value.get_item(&key).unwrap_or_default(), out);
            }
            out.push('}');
        }
        _ => out.push_str(&value.to_string()),
    }
}

/// Python `repr(str)`: single quotes unless the text has `'` and no `"`; backslash escapes for
/// control characters. Python also escapes every other non-printable code point; only the
/// common ones (C1 controls, odd spaces, zero-width and direction marks) are covered here.
fn str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_unprintable(c) => {
                let n = c as u32;
                let _ = match n {
                    0..=0xFF => write!(out, "\\x{n:02x}"),
                    0x100..=0xFFFF => write!(out, "\\u{n:04x}"),
                    _ => write!(out, "\\U{n:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn is_unprintable(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x1F | 0x7F..=0xA0 | 0xAD | 0x1680 | 0x2000..=0x200F | 0x2028..=0x202F
        | 0x205F..=0x2064 | 0x3000 | 0xFEFF)
}

/// Python `repr(float)`: the shortest digits that round-trip (as Rust's `{:e}`), written
/// positionally when the decimal exponent is in [-4, 16) and as `1.5e+16` / `1e-07` otherwise.
pub(super) fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` writes an integer exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() > int_len {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            } else {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (123.456, "123.456"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.25e100, "1.25e+100"),
            (-2.5, "-2.5"),
            (f64::INFINITY, "inf"),
        ];
        for (x, expected) in cases {
            assert_eq!(float_repr(x), expected, "{x:e}");
        }
    }

    #[test]
    fn values_repr_like_python() {
        let value = Value::from_serialize(serde_json::json!(
            {"a": [1, 2.0, null, true, "it's"], "b": "say \"hi\"\n", "c": "x'\""}
        ));
        assert_eq!(
            repr(&value),
            r#"{'a': [1, 2.0, None, True, "it's"], 'b': 'say "hi"\n', 'c': 'x\'"'}"#
        );
        assert_eq!(repr(&Value::from("\u{7}\u{200b}")), r"'\x07\u200b'");
    }
}

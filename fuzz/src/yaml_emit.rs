//! Writes a tree as a YAML file using what hand-written manifests may contain: block and flow
//! styles, plain, single- and double-quoted scalars, comments, document markers, a List's
//! items as documents of their own, and node properties: tags (local `!x`, non-specific `!`,
//! core `!!map`/`!!str`...) and anchors with aliases to them. Every choice is the fuzzer's.
//! The YAML always means the tree it was written from, wrapped in whatever tags it got.

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Value};

/// The file for `tree`: one document, or (sometimes, for a List) one per item.
pub fn file(u: &mut Unstructured<'_>, tree: &Value) -> Result<Vec<u8>> {
    let items = tree["items"]
        .as_array()
        .filter(|_| tree["kind"].as_str().is_some_and(|k| k.ends_with("List")));
    let docs: Vec<&Value> = match items {
        Some(items) if u.ratio(1, 4)? => items.iter().collect(),
        _ => vec![tree],
    };
    let mut out = String::new();
    for (i, doc) in docs.into_iter().enumerate() {
        // Anchors belong to one document.
        let mut w = Writer {
            u,
            out: String::new(),
            anchors: Vec::new(),
        };
        w.document(doc, i > 0)?;
        out.push_str(&w.out);
    }
    Ok(out.into_bytes())
}

struct Writer<'u, 'a> {
    u: &'u mut Unstructured<'a>,
    out: String,
    /// Values anchored so far in this document (as JSON text) and their anchor names.
    anchors: Vec<(String, String)>,
}

fn is_collection(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

impl Writer<'_, '_> {
    fn document(&mut self, doc: &Value, separated: bool) -> Result<()> {
        let props = self.props(doc)?;
        let block = is_collection(doc) && self.u.ratio(3, 4)?;
        if separated || !props.is_empty() || self.u.ratio(1, 4)? {
            self.out.push_str("---");
            if !props.is_empty() {
                self.out.push(' ');
                self.out.push_str(props.trim_end());
            }
            self.out.push(if block { '\n' } else { ' ' });
        }
        if block {
            self.block(doc, 0)?;
        } else {
            self.flow_or_scalar(doc)?;
            self.out.push('\n');
        }
        if self.u.ratio(1, 8)? {
            self.out.push_str("...\n");
        }
        Ok(())
    }

    /// A tag and/or an anchor for `v` ("" or ending in a space), or an alias standing for it
    /// (when an equal value was anchored before): then `v` itself must not be written.
    fn props(&mut self, v: &Value) -> Result<String> {
        let text = v.to_string();
        if let Some((_, name)) = self.anchors.iter().find(|(t, _)| *t == text)
            && self.u.ratio(1, 2)?
        {
            return Ok(format!("*{name}"));
        }
        let mut p = String::new();
        if self.u.ratio(1, 12)? {
            let core = match v {
                Value::Object(_) => "!!map",
                Value::Array(_) => "!!seq",
                Value::String(_) => "!!str",
                Value::Number(n) if n.is_f64() => "!!float",
                Value::Number(_) => "!!int",
                Value::Bool(_) => "!!bool",
                Value::Null => "!!null",
            };
            let tags = ["!x", "!", core, "!<tag:yaml.org,2002:str>", "!k8s!Service"];
            p.push_str(tags[self.u.choose_index(tags.len())?]);
            p.push(' ');
        }
        if self.u.ratio(1, 12)? {
            let name = format!("a{}", self.anchors.len());
            p.push_str(&format!("&{name} "));
            self.anchors.push((text, name));
        }
        Ok(p)
    }

    /// `v` as a block collection at `indent` (each entry on lines of its own).
    fn block(&mut self, v: &Value, indent: usize) -> Result<()> {
        let pad = " ".repeat(indent);
        match v {
            Value::Object(m) => {
                for (k, item) in m {
                    self.out.push_str(&pad);
                    self.out.push_str(&key(k));
                    self.out.push(':');
                    self.entry(item, indent)?;
                }
            }
            Value::Array(a) => {
                for item in a {
                    self.out.push_str(&pad);
                    self.out.push('-');
                    self.entry(item, indent)?;
                }
            }
            other => {
                self.out.push_str(&pad);
                self.inline(other)?;
                self.out.push('\n');
            }
        }
        Ok(())
    }

    /// The rest of a block entry after its `key:` or `-`.
    fn entry(&mut self, v: &Value, indent: usize) -> Result<()> {
        let props = self.props(v)?;
        if props.starts_with('*') {
            self.out.push(' ');
            self.out.push_str(&props);
            self.out.push('\n');
            return Ok(());
        }
        if is_collection(v) && self.u.ratio(3, 4)? {
            if !props.is_empty() {
                self.out.push(' ');
                self.out.push_str(props.trim_end());
            }
            self.out.push('\n');
            return self.block(v, indent + 2);
        }
        self.out.push(' ');
        self.out.push_str(&props);
        self.flow_or_scalar(v)?;
        if self.u.ratio(1, 16)? {
            self.out.push_str("  # a comment");
        }
        self.out.push('\n');
        Ok(())
    }

    /// `v` on one line, with properties.
    fn inline(&mut self, v: &Value) -> Result<()> {
        let props = self.props(v)?;
        if props.starts_with('*') {
            self.out.push_str(&props);
            return Ok(());
        }
        self.out.push_str(&props);
        self.flow_or_scalar(v)
    }

    fn flow_or_scalar(&mut self, v: &Value) -> Result<()> {
        match v {
            Value::Object(m) => self.flow_map(m),
            Value::Array(a) => {
                self.out.push('[');
                for (i, item) in a.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.inline(item)?;
                }
                self.out.push(']');
                Ok(())
            }
            Value::String(s) => {
                let style = self.u.int_in_range(0..=2)?;
                self.out.push_str(&scalar(s, style));
                Ok(())
            }
            Value::Null => {
                self.out
                    .push_str(if self.u.arbitrary()? { "null" } else { "~" });
                Ok(())
            }
            other => {
                self.out.push_str(&other.to_string());
                Ok(())
            }
        }
    }

    fn flow_map(&mut self, m: &Map<String, Value>) -> Result<()> {
        self.out.push('{');
        for (i, (k, item)) in m.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.out.push_str(&key(k));
            self.out.push_str(": ");
            self.inline(item)?;
        }
        self.out.push('}');
        Ok(())
    }
}

/// A mapping key: plain when that is safe, else double-quoted.
fn key(k: &str) -> String {
    scalar(k, 0)
}

/// A string as a scalar: `style` 0 plain (when it would read back as this string), 1 single-
/// quoted (when it has no line breaks or control characters), else double-quoted.
fn scalar(s: &str, style: u8) -> String {
    if style == 0 && plain_is_string(s) {
        return s.to_owned();
    }
    if style == 1 && s.chars().all(|c| (' '..='~').contains(&c)) {
        return format!("'{}'", s.replace('\'', "''"));
    }
    double_quoted(s)
}

/// Whether `s` written plain reads back as this string (not a number, bool or null, and no
/// character with a meaning in YAML). Conservative: quoting is always right.
fn plain_is_string(s: &str) -> bool {
    let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let chars_ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-'));
    let lower = s.to_ascii_lowercase();
    let special = [
        "null", "true", "false", "yes", "no", "on", "off", "y", "n", ".inf", ".nan",
    ];
    first_ok && chars_ok && !special.contains(&lower.as_str()) && s.parse::<f64>().is_err()
}

/// A double-quoted scalar escaping everything outside printable ASCII, so that any string
/// (control characters, non-characters) can be written.
fn double_quoted(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

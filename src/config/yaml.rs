//! YAML text to a `serde_yaml::Value` whose every value knows where it is.
//!
//! Owns parsing (with `saphyr-parser`, which reports positions) and the located
//! index. Each value of the tree (not the keys) is wrapped in a YAML tag that
//! holds its [`At`] in the [`Index`]: its line, the line of its key, and for a
//! mapping every key with its line, repeated keys included. `raw::Slot` reads
//! the tag back while serde fills the schema's structs, so a value carries its
//! position through serde and nothing else has to look it up by key.
//!
//! Invariants: every scalar stays text exactly as written (`1.50`, `0x20` and a
//! 40-digit secret are not numbers here; the schema parses what it expects);
//! plain `~`, `null` and empty values are null, quoted ones are strings; of a
//! repeated key the first value is kept (the index still has both lines); and
//! no file makes an unbounded tree: depth, values and what aliases add are
//! limited before anything is copied.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_yaml::mapping::Entry;
use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

/// Deepest nesting accepted (the schema itself needs four levels).
pub(crate) const MAX_DEPTH: usize = 64;
/// Most nodes accepted in one file, counting every use of an alias: room for
/// 300,000 accounts of nine keys each.
pub(crate) const MAX_NODES: usize = 6_000_000;
/// Most nodes that aliases may add to the tree, each use counted. An alias is
/// the only way a small file becomes a large tree; real files alias a few
/// short values.
pub(crate) const MAX_ALIAS_NODES: usize = 1_000_000;
/// Most bytes of text (keys and values) that aliases may add, each use
/// counted: a long value used many times is counted as often as it is used.
pub(crate) const MAX_ALIAS_BYTES: usize = 16 * 1024 * 1024;

/// Where one value is: an index into [`Index`].
pub(crate) type At = usize;

/// A parsed file: the tree for serde and the positions of its values.
#[derive(Debug)]
pub(crate) struct Document {
    /// Every value tagged with its [`At`]; keys are plain strings.
    pub root: Value,
    pub index: Index,
}

/// The position of every value of a [`Document`].
#[derive(Debug, Default)]
pub(crate) struct Index(Vec<Position>);

/// Where one value is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Position {
    /// The (1-based) line the value starts on.
    pub line: usize,
    /// The line of the key, for a value in a mapping.
    pub key_line: Option<usize>,
    /// For a mapping: each key and its line, in file order, repeats included.
    pub keys: Vec<(String, usize)>,
}

impl Index {
    /// The position of the value at `at`.
    pub(crate) fn get(&self, at: At) -> &Position {
        &self.0[at]
    }

    fn add(&mut self, line: usize) -> At {
        self.0.push(Position {
            line,
            ..Position::default()
        });
        self.0.len() - 1
    }
}

/// A YAML syntax error (or a file too large or deep to accept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: Option<usize>,
    pub message: String,
}

impl SyntaxError {
    fn at(span: Span, message: impl Into<String>) -> Self {
        SyntaxError {
            line: Some(span.start.line()),
            message: message.into(),
        }
    }
}

/// A finished value, with what it counts against the alias limits.
#[derive(Clone)]
struct Built {
    /// Tagged with `at`.
    value: Value,
    at: At,
    /// Nodes in it, itself and keys included.
    size: usize,
    /// Bytes of text (keys and scalars) in it.
    bytes: usize,
}

/// A collection being built.
struct Frame {
    at: At,
    anchor: usize,
    size: usize,
    bytes: usize,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<Value>),
    /// The mapping so far and the key waiting for its value.
    Map(Mapping, Option<(String, usize)>),
}

/// Wraps `value` in the tag that names its position.
fn tagged(at: At, value: Value) -> Value {
    Value::Tagged(Box::new(TaggedValue {
        tag: Tag::new(at.to_string()),
        value,
    }))
}

/// Parses one YAML document. `Ok(None)` for a file with no document (empty or
/// only comments).
///
/// Errors on invalid YAML, on more than one document, on non-scalar mapping
/// keys, on files deeper than [`MAX_DEPTH`] or larger than [`MAX_NODES`], and
/// on aliases that would add more than [`MAX_ALIAS_NODES`] nodes or
/// [`MAX_ALIAS_BYTES`] of text.
pub(crate) fn parse(text: &str) -> Result<Option<Document>, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut index = Index::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Built> = HashMap::new();
    let mut root: Option<Value> = None;
    let mut documents = 0usize;
    let mut nodes = 0usize;
    let mut alias_nodes = 0usize;
    let mut alias_bytes = 0usize;

    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| {
            // `appids: [*]` is the usual way to get here: `*` starts an alias.
            let hint = if e.info().contains("alias") {
                " (quote a literal `*`, e.g. [\"*\"])"
            } else {
                ""
            };
            SyntaxError {
                line: Some(e.marker().line()),
                message: format!("invalid YAML: {}{hint}", e.info()),
            }
        })?;
        let line = span.start.line();
        let awaiting_key = matches!(
            stack.last(),
            Some(Frame {
                kind: FrameKind::Map(_, None),
                ..
            })
        );
        let done: Built = match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => continue,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError::at(
                        span,
                        "the file holds more than one YAML document (`---`); keep one",
                    ));
                }
                continue;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(SyntaxError::at(
                        span,
                        format!("values are nested more than {MAX_DEPTH} levels deep"),
                    ));
                }
                let kind = if matches!(event, Event::SequenceStart(..)) {
                    FrameKind::Seq(Vec::new())
                } else {
                    FrameKind::Map(Mapping::new(), None)
                };
                stack.push(Frame {
                    at: index.add(line),
                    anchor,
                    size: 1,
                    bytes: 0,
                    kind,
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = stack.pop() else {
                    return Err(SyntaxError::at(span, "invalid YAML: unbalanced collection"));
                };
                nodes += 1;
                if nodes > MAX_NODES {
                    return Err(too_large(span));
                }
                let value = match frame.kind {
                    FrameKind::Seq(items) => Value::Sequence(items),
                    FrameKind::Map(map, _) => Value::Mapping(map),
                };
                let built = Built {
                    value: tagged(frame.at, value),
                    at: frame.at,
                    size: frame.size,
                    bytes: frame.bytes,
                };
                if frame.anchor > 0 {
                    anchors.insert(frame.anchor, built.clone());
                }
                built
            }
            Event::Scalar(text, style, anchor, tag) => {
                let forced_string = tag
                    .as_ref()
                    .is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !forced_string;
                let value = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    let mut text = text.into_owned();
                    // The scanner reserves 128 bytes for every plain scalar;
                    // kept, that is most of a large file's tree.
                    text.shrink_to_fit();
                    Value::String(text)
                };
                let bytes = value.as_str().map_or(0, str::len);
                nodes += 1;
                if nodes > MAX_NODES {
                    return Err(too_large(span));
                }
                if awaiting_key {
                    if anchor > 0 {
                        let at = index.add(line);
                        let value = tagged(at, value.clone());
                        anchors.insert(
                            anchor,
                            Built {
                                value,
                                at,
                                size: 1,
                                bytes,
                            },
                        );
                    }
                    set_key(&mut stack, value, line, bytes);
                    continue;
                }
                let at = index.add(line);
                let built = Built {
                    value: tagged(at, value),
                    at,
                    size: 1,
                    bytes,
                };
                if anchor > 0 {
                    anchors.insert(anchor, built.clone());
                }
                built
            }
            Event::Alias(id) => {
                let Some(anchored) = anchors.get(&id) else {
                    return Err(SyntaxError::at(span, "invalid YAML: unknown alias"));
                };
                // Checked before the copy is made, so a bomb allocates nothing.
                alias_nodes += anchored.size;
                alias_bytes += anchored.bytes;
                if alias_nodes > MAX_ALIAS_NODES {
                    return Err(SyntaxError::at(
                        span,
                        format!(
                            "aliases (`*name`) expand to more than {MAX_ALIAS_NODES} values, each use counted; it is not a wxtoken config"
                        ),
                    ));
                }
                if alias_bytes > MAX_ALIAS_BYTES {
                    return Err(SyntaxError::at(
                        span,
                        format!(
                            "aliases (`*name`) expand to more than {} MiB of text, each use counted; use fewer or shorter aliases",
                            MAX_ALIAS_BYTES / 1024 / 1024
                        ),
                    ));
                }
                nodes += anchored.size;
                if nodes > MAX_NODES {
                    return Err(too_large(span));
                }
                let Value::Tagged(inner) = &anchored.value else {
                    unreachable!("every built value is tagged");
                };
                if awaiting_key {
                    if !matches!(inner.value, Value::Null | Value::String(_)) {
                        return Err(not_a_key(line));
                    }
                    let (value, bytes) = (inner.value.clone(), anchored.bytes);
                    set_key(&mut stack, value, line, bytes);
                    continue;
                }
                // The copy is where the alias is; what is inside keeps its own lines.
                let keys = index.get(anchored.at).keys.clone();
                let value = inner.value.clone();
                let (size, bytes) = (anchored.size, anchored.bytes);
                let at = index.add(line);
                index.0[at].keys = keys;
                Built {
                    value: tagged(at, value),
                    at,
                    size,
                    bytes,
                }
            }
        };

        match stack.last_mut() {
            None => root = Some(done.value),
            Some(frame) => {
                frame.size += done.size;
                frame.bytes += done.bytes;
                match &mut frame.kind {
                    FrameKind::Seq(items) => items.push(done.value),
                    FrameKind::Map(map, pending) => {
                        // Scalar keys were taken above: this is a list or mapping as a key.
                        let Some((key, key_line)) = pending.take() else {
                            return Err(not_a_key(index.get(done.at).line));
                        };
                        index.0[done.at].key_line = Some(key_line);
                        index.0[frame.at].keys.push((key.clone(), key_line));
                        // The first of repeated keys is kept; the schema reports the repeat.
                        if let Entry::Vacant(slot) = map.entry(Value::String(key)) {
                            slot.insert(done.value);
                        }
                    }
                }
            }
        }
    }
    Ok(root.map(|root| Document { root, index }))
}

/// Makes `key` (a scalar) the key waiting for its value in the innermost mapping.
fn set_key(stack: &mut [Frame], key: Value, line: usize, bytes: usize) {
    let Some(Frame {
        size,
        bytes: frame_bytes,
        kind: FrameKind::Map(_, pending),
        ..
    }) = stack.last_mut()
    else {
        unreachable!("a key is only awaited by a mapping");
    };
    *size += 1;
    *frame_bytes += bytes;
    let key = match key {
        Value::String(text) => text,
        _ => String::new(),
    };
    *pending = Some((key, line));
}

fn not_a_key(line: usize) -> SyntaxError {
    SyntaxError {
        line: Some(line),
        message: "mapping keys must be plain names, not lists or mappings".to_string(),
    }
}

fn too_large(span: Span) -> SyntaxError {
    SyntaxError::at(
        span,
        format!(
            "the file has more than {MAX_NODES} values (aliases included); it is not a wxtoken config"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value inside a position tag, and its position.
    fn open<'v>(doc: &'v Document, value: &'v Value) -> (&'v Value, &'v Position) {
        let Value::Tagged(t) = value else {
            panic!("untagged value {value:?}")
        };
        (
            &t.value,
            doc.index
                .get(t.tag.to_string().trim_start_matches('!').parse().unwrap()),
        )
    }

    fn entry<'v>(doc: &'v Document, map: &'v Value, key: &str) -> (&'v Value, &'v Position) {
        let (Value::Mapping(m), _) = open(doc, map) else {
            panic!("expected a mapping")
        };
        open(doc, &m[key])
    }

    #[test]
    fn keys_and_values_carry_their_lines() {
        let doc = parse("# c\nlisten: x\nupstream:\n  timeout: 5s\nlist:\n  - a\n  -\n    k: v\n")
            .unwrap()
            .unwrap();
        let (_, top) = open(&doc, &doc.root);
        assert_eq!(top.keys[0], ("listen".to_string(), 2));
        let (listen, at) = entry(&doc, &doc.root, "listen");
        assert_eq!(
            (listen, at.line, at.key_line),
            (&Value::String("x".into()), 2, Some(2))
        );
        let (_, up) = entry(&doc, &doc.root, "upstream");
        assert_eq!(up.keys, [("timeout".to_string(), 4)]);
        let (Value::Sequence(items), _) = entry(&doc, &doc.root, "list") else {
            panic!("expected a list")
        };
        assert_eq!(open(&doc, &items[0]).1.line, 6);
        assert_eq!(open(&doc, &items[1]).1.keys, [("k".to_string(), 8)]);
    }

    #[test]
    fn scalars_stay_text_as_written_and_only_plain_null_forms_are_null() {
        let doc = parse("a:\nb: ~\nc: \"\"\nd: !!str 12\ne: 1.50\nf: 0x20\ng: 1234567890123456789012345678901234567890\nh: true\n")
            .unwrap()
            .unwrap();
        let text = |k: &str| entry(&doc, &doc.root, k).0.clone();
        assert_eq!(text("a"), Value::Null);
        assert_eq!(text("b"), Value::Null);
        assert_eq!(text("c"), Value::String(String::new()));
        for (k, v) in [
            ("d", "12"),
            ("e", "1.50"),
            ("f", "0x20"),
            ("g", "1234567890123456789012345678901234567890"),
            ("h", "true"),
        ] {
            assert_eq!(text(k), Value::String(v.into()), "{k}");
        }
    }

    #[test]
    fn repeated_keys_keep_the_first_value_and_both_lines() {
        let doc = parse("a: 1\nb: 2\na: 3\n").unwrap().unwrap();
        assert_eq!(entry(&doc, &doc.root, "a").0, &Value::String("1".into()));
        let keys = &open(&doc, &doc.root).1.keys;
        assert_eq!(keys[0], ("a".to_string(), 1));
        assert_eq!(keys[2], ("a".to_string(), 3));
    }

    #[test]
    fn aliases_resolve_at_the_line_of_their_use_and_syntax_errors_have_lines() {
        let doc = parse("a: &x [1, 2]\nb: *x\n").unwrap().unwrap();
        let (a, _) = entry(&doc, &doc.root, "a");
        let (b, b_at) = entry(&doc, &doc.root, "b");
        let items = |v: &Value| match v {
            Value::Sequence(items) => items
                .iter()
                .map(|i| open(&doc, i).0.clone())
                .collect::<Vec<_>>(),
            other => panic!("expected a list, got {other:?}"),
        };
        assert_eq!(items(a), items(b));
        assert_eq!(b_at.line, 2);

        let err = parse("a: 1\nb: c: d\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.starts_with("invalid YAML"), "{}", err.message);
    }

    #[test]
    fn empty_files_have_no_document_and_two_documents_are_refused() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
        assert_eq!(parse("a: 1\n---\nb: 2\n").unwrap_err().line, Some(2));
        assert_eq!(parse("? [a]\n: b\n").unwrap_err().line, Some(1));
    }

    #[test]
    fn deep_nesting_and_alias_bombs_are_refused_not_crashed() {
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).is_err());
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = (b'a' + i) as char;
            let next = (b'a' + i + 1) as char;
            bomb.push_str(&format!("{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let err = parse(&bomb).unwrap_err();
        assert!(
            err.message
                .starts_with("aliases (`*name`) expand to more than 1000000 values"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_long_value_used_many_times_is_refused_by_its_bytes_before_it_is_copied() {
        let big = "x".repeat(1 << 20);
        let uses = vec!["*a"; 100].join(", ");
        let err = parse(&format!("a: &a {big}\nb: [{uses}]\n")).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(
            err.message,
            "aliases (`*name`) expand to more than 16 MiB of text, each use counted; use fewer or shorter aliases"
        );
        // A few uses are fine.
        let few = ["*a"; 3].join(", ");
        assert!(parse(&format!("a: &a {big}\nb: [{few}]\n")).is_ok());
    }
}

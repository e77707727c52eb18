//! YAML text to a small tree whose every key and value remembers its line.
//!
//! Owns the only use of the YAML parser in the configuration loader. The tree is
//! built from `saphyr-parser` events (which carry positions), so later checks can
//! point at `file:line` for any value, not just for syntax errors.
//! Invariants: a tree is at most [`MAX_DEPTH`] levels deep and at most
//! [`MAX_NODES`] nodes large, and aliases add at most [`MAX_ALIAS_NODES`]
//! nodes and [`MAX_ALIAS_BYTES`] of text to it (every use counted), so no
//! input can exhaust the stack or memory; a syntax error is returned, never a
//! panic.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

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

/// One YAML value and the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub line: usize,
    pub kind: Kind,
}

/// What a [`Node`] holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// An empty value, `~` or `null`.
    Null,
    /// Any other scalar. `plain` is false for quoted and block scalars and for
    /// `!!str`-tagged ones, which are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` pair of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_line: usize,
    pub value: Node,
}

impl Node {
    /// A short name of the node's type for messages ("a list", "a mapping", ...).
    pub(crate) fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Null => "empty",
            Kind::Scalar { .. } => "a single value",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// How many nodes the tree under this one has, itself and keys included.
    fn size(&self) -> usize {
        1 + match &self.kind {
            Kind::Null | Kind::Scalar { .. } => 0,
            Kind::Seq(items) => items.iter().map(Node::size).sum(),
            Kind::Map(entries) => entries.iter().map(|e| 1 + e.value.size()).sum(),
        }
    }

    /// How many bytes of text (keys and scalar values) the tree under this one holds.
    fn text_bytes(&self) -> usize {
        match &self.kind {
            Kind::Null => 0,
            Kind::Scalar { text, .. } => text.len(),
            Kind::Seq(items) => items.iter().map(Node::text_bytes).sum(),
            Kind::Map(entries) => entries
                .iter()
                .map(|e| e.key.len() + e.value.text_bytes())
                .sum(),
        }
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

/// A collection being built.
enum Frame {
    Seq {
        line: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        anchor: usize,
        entries: Vec<Entry>,
        key: Option<(String, usize)>,
    },
}

/// Parses one YAML document. `Ok(None)` for a file with no document (empty or
/// only comments).
///
/// Errors on invalid YAML, on more than one document, on non-scalar mapping
/// keys, on files deeper than [`MAX_DEPTH`] or larger than [`MAX_NODES`], and
/// on aliases that would add more than [`MAX_ALIAS_NODES`] nodes or
/// [`MAX_ALIAS_BYTES`] of text.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
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
        let done: Node = match event {
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
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        line,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        line,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                    }
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq {
                        line,
                        anchor,
                        items,
                    }) => (
                        Node {
                            line,
                            kind: Kind::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        line,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            line,
                            kind: Kind::Map(entries),
                        },
                        anchor,
                    ),
                    None => {
                        return Err(SyntaxError::at(span, "invalid YAML: unbalanced collection"));
                    }
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::Scalar(text, style, anchor, tag) => {
                let forced_string = tag
                    .as_ref()
                    .is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !forced_string;
                let kind = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Kind::Null
                } else {
                    let mut text = text.into_owned();
                    // The scanner reserves 128 bytes for every plain scalar;
                    // kept, that is most of a large file's tree.
                    text.shrink_to_fit();
                    Kind::Scalar { text, plain }
                };
                let node = Node { line, kind };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => {
                    // Checked before the copy is made, so a bomb allocates nothing.
                    let size = node.size();
                    alias_nodes += size;
                    alias_bytes += node.text_bytes();
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
                    // The alias itself is counted below, like every node.
                    nodes += size - 1;
                    if nodes > MAX_NODES {
                        return Err(too_large(span));
                    }
                    Node {
                        line,
                        kind: node.kind.clone(),
                    }
                }
                None => return Err(SyntaxError::at(span, "invalid YAML: unknown alias")),
            },
        };

        nodes += 1;
        if nodes > MAX_NODES {
            return Err(too_large(span));
        }
        match stack.last_mut() {
            None => root = Some(done),
            Some(Frame::Seq { items, .. }) => items.push(done),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some((key, key_line)) => entries.push(Entry {
                    key,
                    key_line,
                    value: done,
                }),
                None => match done.kind {
                    Kind::Scalar { text, .. } => *key = Some((text, done.line)),
                    Kind::Null => *key = Some((String::new(), done.line)),
                    Kind::Seq(_) | Kind::Map(_) => {
                        return Err(SyntaxError {
                            line: Some(done.line),
                            message: "mapping keys must be plain names, not lists or mappings"
                                .to_string(),
                        });
                    }
                },
            },
        }
    }
    Ok(root)
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

    fn map_entries(node: &Node) -> &[Entry] {
        match &node.kind {
            Kind::Map(e) => e,
            other => panic!("expected a map, got {other:?}"),
        }
    }

    #[test]
    fn keys_and_values_carry_their_lines() {
        let root = parse("# c\nlisten: x\nupstream:\n  timeout: 5s\nlist:\n  - a\n  -\n    k: v\n")
            .unwrap()
            .unwrap();
        let top = map_entries(&root);
        assert_eq!((top[0].key.as_str(), top[0].key_line), ("listen", 2));
        assert_eq!(top[0].value.line, 2);
        let up = map_entries(&top[1].value);
        assert_eq!(
            (up[0].key.as_str(), up[0].key_line, up[0].value.line),
            ("timeout", 4, 4)
        );
        let Kind::Seq(items) = &top[2].value.kind else {
            panic!("expected a list")
        };
        assert_eq!(items[0].line, 6);
        assert_eq!(map_entries(&items[1])[0].key_line, 8);
    }

    #[test]
    fn plain_null_forms_are_null_and_quoted_ones_are_strings() {
        let root = parse("a:\nb: ~\nc: \"\"\nd: !!str 12\ne: 12\n")
            .unwrap()
            .unwrap();
        let kinds: Vec<_> = map_entries(&root)
            .iter()
            .map(|e| e.value.kind.clone())
            .collect();
        assert_eq!(kinds[0], Kind::Null);
        assert_eq!(kinds[1], Kind::Null);
        assert_eq!(
            kinds[2],
            Kind::Scalar {
                text: String::new(),
                plain: false
            }
        );
        assert_eq!(
            kinds[3],
            Kind::Scalar {
                text: "12".into(),
                plain: false
            }
        );
        assert_eq!(
            kinds[4],
            Kind::Scalar {
                text: "12".into(),
                plain: true
            }
        );
    }

    #[test]
    fn aliases_resolve_and_syntax_errors_have_lines() {
        let root = parse("a: &x [1, 2]\nb: *x\n").unwrap().unwrap();
        let e = map_entries(&root);
        assert_eq!(e[0].value.kind, e[1].value.kind);
        assert_eq!(e[1].value.line, 2);

        let err = parse("a: 1\nb: c: d\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.starts_with("invalid YAML"), "{}", err.message);
    }

    #[test]
    fn empty_files_have_no_document_and_two_documents_are_refused() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("# only a comment\n").unwrap(), None);
        assert_eq!(parse("a: 1\n---\nb: 2\n").unwrap_err().line, Some(2));
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

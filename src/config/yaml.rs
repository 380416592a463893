//! The YAML subset nutcracker accepts, read into a small tree that keeps line numbers.
//!
//! nutcracker (libyaml) takes one document holding block mappings, one block sequence
//! (`servers:`) and scalars taken as raw text. It rejects `---`, directives, flow
//! collections, anchors, aliases and tags; so do we, each with its line.

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span, StructureStyle};

use super::error::Problem;

/// Deepest nesting we build: document, pools, pool keys, `servers`/`migrate`, plus slack.
const MAX_DEPTH: usize = 8;

/// A YAML node with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// 1-based line where the node starts.
    pub line: usize,
    /// What the node holds.
    pub kind: NodeKind,
}

/// The shapes of node the config uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A scalar as written (after quote processing); an empty value is `""`.
    Scalar(String),
    /// A block sequence.
    Seq(Vec<Node>),
    /// A block mapping, entries in file order (duplicates kept so they can be reported).
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The scalar text, if this node is a scalar.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// A word for the node's shape, for error messages.
    pub fn shape(&self) -> &'static str {
        match self.kind {
            NodeKind::Scalar(_) => "a value",
            NodeKind::Seq(_) => "a sequence",
            NodeKind::Map(_) => "a mapping",
        }
    }
}

/// A collection being built.
enum Frame {
    /// A sequence and the items read so far.
    Seq(usize, Vec<Node>),
    /// A mapping, the entries read so far and a key waiting for its value.
    Map(usize, Vec<(Node, Node)>, Option<Node>),
}

/// The outcome of reading a file: the root node (None for an empty file), and the
/// problems found on the way. A YAML syntax error stops reading; a construct nutcracker
/// rejects is reported and reading goes on, so every such problem is listed at once.
pub struct Document {
    /// The document's root node, if the file has one.
    pub root: Option<Node>,
    /// Everything found wrong while reading.
    pub problems: Vec<Problem>,
}

/// Read `text` into a [`Document`].
pub fn read(text: &str) -> Document {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root = None;
    let mut problems = Vec::new();
    let mut documents = 0usize;

    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(pair) => pair,
            Err(e) => {
                problems.push(Problem::at(
                    e.marker().line(),
                    format!("YAML syntax error: {}", e.info()),
                ));
                break;
            }
        };
        let line = span.start.line();
        let node = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => continue,
            Event::DocumentStart(explicit, version) => {
                documents += 1;
                if documents > 1 {
                    problems.push(Problem::at(
                        line,
                        "the file holds more than one YAML document; nutcracker reads exactly one",
                    ));
                    break;
                }
                if version.is_some() {
                    problems.push(Problem::at(
                        line,
                        "YAML directives (%YAML, %TAG) are not accepted by nutcracker",
                    ));
                } else if explicit {
                    problems.push(Problem::at(
                        line,
                        "the document start marker '---' is not accepted by nutcracker; remove it",
                    ));
                }
                continue;
            }
            Event::Alias(_) => {
                problems.push(Problem::at(
                    line,
                    "YAML aliases (*name) are not accepted by nutcracker",
                ));
                Node {
                    line,
                    kind: NodeKind::Scalar(String::new()),
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                check_properties(&mut problems, line, anchor, tag.is_some());
                Node {
                    line,
                    kind: NodeKind::Scalar(scalar_text(&value, style, &span)),
                }
            }
            Event::SequenceStart(style, anchor, ref tag)
            | Event::MappingStart(style, anchor, ref tag) => {
                check_properties(&mut problems, line, anchor, tag.is_some());
                if style == StructureStyle::Flow {
                    problems.push(Problem::at(line, "flow collections ([a, b] or {k: v}) are not accepted by nutcracker; use block style"));
                }
                if stack.len() >= MAX_DEPTH {
                    problems.push(Problem::at(line, format!("nesting deeper than {MAX_DEPTH} levels; a nutcracker config is at most 3 deep")));
                    break;
                }
                let is_seq = matches!(event, Event::SequenceStart(..));
                stack.push(if is_seq {
                    Frame::Seq(line, Vec::new())
                } else {
                    Frame::Map(line, Vec::new(), None)
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(line, items)) => Node {
                    line,
                    kind: NodeKind::Seq(items),
                },
                Some(Frame::Map(line, entries, _)) => Node {
                    line,
                    kind: NodeKind::Map(entries),
                },
                None => continue,
            },
            _ => continue,
        };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }
    Document { root, problems }
}

/// Report anchors and tags, which nutcracker rejects.
fn check_properties(problems: &mut Vec<Problem>, line: usize, anchor: usize, tagged: bool) {
    if anchor != 0 {
        problems.push(Problem::at(
            line,
            "YAML anchors (&name) are not accepted by nutcracker",
        ));
    }
    if tagged {
        problems.push(Problem::at(
            line,
            "YAML tags (!tag, !!str) are not accepted by nutcracker",
        ));
    }
}

/// The scalar as libyaml would hand it to nutcracker: an empty plain value is `""`
/// (the parser reports it as `~`), everything else as written.
fn scalar_text(value: &str, style: ScalarStyle, span: &Span) -> String {
    let empty = style == ScalarStyle::Plain && span.start.index() == span.end.index();
    if empty {
        String::new()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<usize> {
        read(text).problems.iter().map(|p| p.line).collect()
    }

    #[test]
    fn builds_a_tree_with_lines() {
        let doc = read("a:\n  b: 1\n  c:\n   - x\n   - 'y'\n  d:\n");
        assert!(doc.problems.is_empty(), "{:?}", doc.problems);
        let root = doc.root.expect("root");
        let NodeKind::Map(pools) = &root.kind else {
            panic!("map")
        };
        let NodeKind::Map(keys) = &pools[0].1.kind else {
            panic!("map")
        };
        assert_eq!(keys[0].0.as_scalar(), Some("b"));
        assert_eq!(keys[0].1.line, 2);
        let NodeKind::Seq(items) = &keys[1].1.kind else {
            panic!("seq")
        };
        assert_eq!(items[1].as_scalar(), Some("y"));
        assert_eq!(items[1].line, 5);
        assert_eq!(keys[2].1.as_scalar(), Some(""));
    }

    #[test]
    fn rejects_what_nutcracker_rejects() {
        assert_eq!(lines("---\na: 1\n"), [1]);
        assert_eq!(lines("a:\n  b: [1]\n"), [2]);
        assert_eq!(lines("a:\n  b: {c: 1}\n"), [2]);
        assert_eq!(lines("a:\n  b: &x 1\n  c: *x\n"), [2, 3]);
        assert_eq!(lines("a:\n  b: !!str 1\n"), [2]);
        assert_eq!(lines("a: 1\n---\nb: 2\n"), [2]);
        assert_eq!(lines("a: 1\n  b: 2\n"), [2]);
    }

    #[test]
    fn deep_nesting_stops_early() {
        let text = "[".repeat(10_000);
        let doc = read(&text);
        assert!(!doc.problems.is_empty());
    }
}

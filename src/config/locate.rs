//! Maps a key path such as `routes[2].upstream` to its line and column in the YAML source, so
//! that errors found after parsing (a route naming an unknown upstream, an unreadable key file)
//! still point at the exact place in the file.

use saphyr_parser::{Event, Parser, Span};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path into the config document, e.g. `routes[2].match.path_prefix`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        KeyPath(segs)
    }
    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        KeyPath(segs)
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A parsed YAML node with the position where it starts (1-based line and column).
enum Node {
    Leaf(Pos),
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<(String, Node)>),
}

type Pos = (usize, usize);

impl Node {
    fn pos(&self) -> Pos {
        match self {
            Node::Leaf(p) | Node::Seq(p, _) | Node::Map(p, _) => *p,
        }
    }
}

fn pos_of(span: &Span) -> Pos {
    (span.start.line(), span.start.col() + 1)
}

struct Builder<'a> {
    events: Parser<'a, saphyr_parser::StrInput<'a>>,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Option<(Event<'a>, Span)> {
        self.events.next().and_then(Result::ok)
    }

    /// Reads one node whose first event is `first`.
    fn node(&mut self, first: (Event<'a>, Span)) -> Option<Node> {
        let pos = pos_of(&first.1);
        match first.0 {
            Event::SequenceStart(..) => {
                let mut items = Vec::new();
                loop {
                    let ev = self.next()?;
                    if matches!(ev.0, Event::SequenceEnd) {
                        return Some(Node::Seq(pos, items));
                    }
                    items.push(self.node(ev)?);
                }
            }
            Event::MappingStart(..) => {
                let mut entries = Vec::new();
                loop {
                    let key_ev = self.next()?;
                    if matches!(key_ev.0, Event::MappingEnd) {
                        return Some(Node::Map(pos, entries));
                    }
                    let key = match &key_ev.0 {
                        Event::Scalar(text, ..) => text.to_string(),
                        _ => String::new(),
                    };
                    // Complex keys are read and ignored so the stream stays in step.
                    self.node(key_ev)?;
                    let value_ev = self.next()?;
                    entries.push((key, self.node(value_ev)?));
                }
            }
            _ => Some(Node::Leaf(pos)),
        }
    }
}

/// Returns the (line, column) of the node at `path`, or of its deepest existing ancestor when
/// the path does not exist (e.g. a missing key points at the mapping that lacks it).
pub fn locate(source: &str, path: &KeyPath) -> Option<(usize, usize)> {
    let mut builder = Builder {
        events: Parser::new_from_str(source),
    };
    let root = loop {
        let ev = builder.next()?;
        match ev.0 {
            Event::StreamStart | Event::DocumentStart(_) => continue,
            Event::StreamEnd => return Some((1, 1)),
            _ => break builder.node(ev)?,
        }
    };
    let mut node = &root;
    for seg in &path.0 {
        let child = match (seg, node) {
            (Seg::Key(k), Node::Map(_, entries)) => {
                entries.iter().find(|(key, _)| key == k).map(|(_, n)| n)
            }
            (Seg::Index(i), Node::Seq(_, items)) => items.get(*i),
            _ => None,
        };
        match child {
            Some(child) => node = child,
            None => break,
        }
    }
    Some(node.pos())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "listen: x\nroutes:\n  - name: a\n    upstream: one\n  - name: b\n    match: { path: /x }\n    upstream: two\n";

    #[test]
    fn finds_nested_keys_and_indices() {
        let p = KeyPath::root().key("routes").index(1).key("upstream");
        assert_eq!(p.to_string(), "routes[1].upstream");
        assert_eq!(locate(DOC, &p), Some((7, 15)));
        let p = KeyPath::root()
            .key("routes")
            .index(1)
            .key("match")
            .key("path");
        assert_eq!(locate(DOC, &p), Some((6, 20)));
        assert_eq!(locate(DOC, &KeyPath::root().key("listen")), Some((1, 9)));
    }

    #[test]
    fn missing_keys_point_at_the_nearest_ancestor() {
        let p = KeyPath::root().key("routes").index(0).key("match");
        assert_eq!(locate(DOC, &p), Some((3, 5)));
    }
}

//! The Dockerfile, read the way `docker build` reads the parts the tests rely on: instructions
//! (comments dropped, `\` continuations joined), stages, exec-form arrays and `ENV` pairs.
#![allow(dead_code)]

use std::path::Path;

/// The repository's Dockerfile, one string per instruction.
pub fn read(repo: &Path) -> Vec<String> {
    instructions(&std::fs::read_to_string(repo.join("Dockerfile")).unwrap())
}

/// The Dockerfile's instructions, one string each: comments dropped, `\` continuations joined.
pub fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// The instructions of each stage (each starts with its `FROM`).
pub fn stages(instructions: &[String]) -> Vec<&[String]> {
    let starts: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.starts_with("FROM "))
        .map(|(n, _)| n)
        .collect();
    assert!(!starts.is_empty(), "no FROM in the Dockerfile");
    starts
        .iter()
        .zip(
            starts
                .iter()
                .skip(1)
                .chain(std::iter::once(&instructions.len())),
        )
        .map(|(&from, &to)| &instructions[from..to])
        .collect()
}

/// The arguments of every `keyword` instruction of `stage`, in order.
pub fn args<'a>(stage: &'a [String], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter_map(|i| i.strip_prefix(keyword)?.strip_prefix(' '))
        .map(str::trim)
        .collect()
}

/// The one `keyword` instruction of `stage` (a second one would silently override the first).
pub fn only<'a>(stage: &'a [String], keyword: &str) -> &'a str {
    let found = args(stage, keyword);
    assert_eq!(found.len(), 1, "expected one {keyword} in {stage:#?}");
    found[0]
}

/// An exec-form argument list, `["authgate", "run"]` (a JSON array of strings).
pub fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form ({e}): {args}"))
}

/// The `KEY=value` pairs of every `ENV` instruction of `stage`.
pub fn env(stage: &[String]) -> Vec<(String, String)> {
    args(stage, "ENV")
        .into_iter()
        .flat_map(str::split_whitespace)
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV takes KEY=value here, not {pair:?}"));
            (key.to_owned(), value.trim_matches('"').to_owned())
        })
        .collect()
}

//! One collector for every problem a config compile finds, so each section compiles beside its
//! own type and reports in one shape: `file:line:column: key.path: message`.

use std::fmt;

use super::{ConfigError, Diagnostic, KeyPath, Source};

/// The problems found so far while compiling one config file (and the files it names).
pub struct Diagnostics<'a> {
    source: &'a Source,
    found: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(source: &'a Source) -> Self {
        Diagnostics {
            source,
            found: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The config file being compiled (to resolve relative paths, to read files it names).
    pub fn source(&self) -> &'a Source {
        self.source
    }

    /// A problem at `path` in the config file.
    pub fn at(&mut self, path: &KeyPath, message: impl fmt::Display) {
        self.found.push(self.source.diagnostic(path, message));
    }

    /// Something that works but deserves attention (a certificate close to expiry).
    pub fn warn(&mut self, path: &KeyPath, message: impl fmt::Display) {
        let message = format!("warning: {message}");
        self.warnings.push(self.source.diagnostic(path, message));
    }

    /// The warnings so far (taken: they go into the compiled config).
    pub fn take_warnings(&mut self) -> Vec<Diagnostic> {
        std::mem::take(&mut self.warnings)
    }

    /// A problem located in another file (a users file), already placed.
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.found.push(diagnostic);
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// How many problems so far (a section can tell whether it added any).
    pub fn count(&self) -> usize {
        self.found.len()
    }

    /// `value` when nothing was found, else every problem.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, ConfigError> {
        match value {
            Some(v) if self.found.is_empty() => Ok(v),
            _ => Err(ConfigError::Invalid(self.found)),
        }
    }
}

//! Why a port call failed, with the adapter's own error kept as the source.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// The detail of a port error: either a message (test doubles, the engine's own checks) or the
/// adapter error it came from. Like `std::io::Error` with a custom error, it prints as that error
/// and hands on *its* source, so an error chain shows each cause once, and
/// [`Cause::get_ref`] gives the adapter's typed error back (e.g. a `D365Error`).
#[derive(Clone)]
pub enum Cause {
    Message(String),
    Error(Arc<dyn Error + Send + Sync + 'static>),
    /// An error whose own text says too little (an AWS SDK error prints as "service error"),
    /// printed as `text` instead; the error itself is the next link of the chain.
    Described {
        text: String,
        error: Arc<dyn Error + Send + Sync + 'static>,
    },
}

impl Cause {
    /// Keeps `e` (printed as itself; its source is the next cause).
    pub fn error(e: impl Error + Send + Sync + 'static) -> Self {
        Cause::Error(Arc::new(e))
    }

    /// Keeps `e`, printed as `text` (see [`Cause::Described`]).
    pub fn described(text: impl Into<String>, e: impl Error + Send + Sync + 'static) -> Self {
        Cause::Described {
            text: text.into(),
            error: Arc::new(e),
        }
    }

    /// The adapter error this cause came from, if any (downcast it to the adapter's type).
    pub fn get_ref(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        match self {
            Cause::Message(_) => None,
            Cause::Error(e) | Cause::Described { error: e, .. } => Some(e.as_ref()),
        }
    }

    /// Prints `"{context}: {self}"`, or only the cause when `context` is empty: how port errors
    /// that say what the adapter was doing show their cause.
    pub(crate) fn in_context<'a>(&'a self, context: &'a str) -> impl fmt::Display + 'a {
        InContext(context, self)
    }
}

struct InContext<'a>(&'a str, &'a Cause);

impl fmt::Display for InContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.is_empty() {
            write!(f, "{}: ", self.0)?;
        }
        fmt::Display::fmt(self.1, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Message(m) | Cause::Described { text: m, .. } => f.write_str(m),
            Cause::Error(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Message(m) => fmt::Debug::fmt(m, f),
            Cause::Error(e) => fmt::Debug::fmt(e, f),
            Cause::Described { text, error } => f
                .debug_struct("Described")
                .field("text", text)
                .field("error", error)
                .finish(),
        }
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Cause::Message(_) => None,
            Cause::Error(e) => e.source(),
            Cause::Described { error, .. } => Some(error.as_ref()),
        }
    }
}

impl From<String> for Cause {
    fn from(m: String) -> Self {
        Cause::Message(m)
    }
}

impl From<&str> for Cause {
    fn from(m: &str) -> Self {
        Cause::Message(m.to_string())
    }
}

impl From<Cause> for String {
    fn from(c: Cause) -> Self {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn prints_as_the_error_and_hands_on_its_source() {
        let c = Cause::error(Outer(std::io::Error::other("inner")));
        assert_eq!(c.to_string(), "outer");
        assert_eq!(c.source().map(|s| s.to_string()).as_deref(), Some("inner"));
        assert!(c
            .get_ref()
            .is_some_and(|e| e.downcast_ref::<Outer>().is_some()));
        let m = Cause::from("plain");
        assert_eq!(m.to_string(), "plain");
        assert!(m.source().is_none() && m.get_ref().is_none());
    }

    #[test]
    fn a_described_error_prints_its_text_and_hands_on_the_error_itself() {
        let c = Cause::described("summary", Outer(std::io::Error::other("inner")));
        assert_eq!(c.to_string(), "summary");
        let next = c.source().expect("the error is the next link");
        assert_eq!(next.to_string(), "outer");
        assert_eq!(
            next.source().map(|s| s.to_string()).as_deref(),
            Some("inner")
        );
        assert!(c
            .get_ref()
            .is_some_and(|e| e.downcast_ref::<Outer>().is_some()));
        assert_eq!(c.in_context("doing x").to_string(), "doing x: summary");
        assert_eq!(c.in_context("").to_string(), "summary");
    }
}

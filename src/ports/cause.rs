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
}

impl Cause {
    /// Keeps `e` (printed as itself; its source is the next cause).
    pub fn error(e: impl Error + Send + Sync + 'static) -> Self {
        Cause::Error(Arc::new(e))
    }

    /// The adapter error this cause came from, if any (downcast it to the adapter's type).
    pub fn get_ref(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        match self {
            Cause::Message(_) => None,
            Cause::Error(e) => Some(e.as_ref()),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Message(m) => f.write_str(m),
            Cause::Error(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Message(m) => fmt::Debug::fmt(m, f),
            Cause::Error(e) => fmt::Debug::fmt(e, f),
        }
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Cause::Message(_) => None,
            Cause::Error(e) => e.source(),
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
}

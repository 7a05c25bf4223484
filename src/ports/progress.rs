//! The progress port: what the engine tells its caller while a run goes (the CLI draws a line,
//! the Lambdas log and notify), and where fault injection stops it.

use crate::domain::run::RunRecord;

/// Progress callbacks for long runs (the CLI draws a line on a terminal; Lambdas log).
pub trait Progress: Send + Sync {
    fn step(&self, _message: &str) {}
    fn line_posted(&self, _done: usize, _total: usize) {}
    /// Fault injection: called at every durable step boundary. Returning `true` makes the
    /// engine stop right there, as a killed process would: no cleanup, no lock release, no final
    /// status. The next attempt (a retry, a redelivery or a replay) must converge from there.
    fn crash_at(&self, _point: CrashPoint) -> bool {
        false
    }
    /// Called once a run's final status is recorded, whatever it is. The Lambdas publish the
    /// run's notification here (see [`crate::notify`]); best effort: it cannot change the run.
    fn finished<'a>(
        &'a self,
        _run: &'a RunRecord,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(std::future::ready(()))
    }
}

/// Step boundaries where a crash can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The run, its source rows and planned lines are recorded and validated; nothing sent to
    /// D365.
    Recorded,
    /// The period lock is held; nothing sent to D365.
    Locked,
    /// The journal header exists in D365 and is recorded.
    HeaderCreated,
    /// Some lines (or whole vouchers) were written and recorded.
    LinesWritten,
    /// Everything is in D365; the final status is not yet recorded.
    Posted,
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

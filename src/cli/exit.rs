//! Exit codes of `ml-connector`: each means one thing, so a script or a scheduler can act on
//! it. The same table is printed by `--help` and listed in the README.

/// Done: posted, already posted (nothing new), preview shown, check passed, reversed (or
/// already reversed: `reverse` is idempotent; or nothing to reverse: the run wrote no
/// journal, so D365 already holds nothing of it), shown, listed.
pub const OK: i32 = 0;
/// Failed, or needs attention: a connection, login, D365 or store error, a conflict, a busy
/// period, an interrupted run, a posted duplicate, a record not found, a reconciliation that
/// differs. The message says what to do.
pub const FAILED: i32 = 1;
/// Rejected: the data or the configuration did not pass the checks (validation, `check`,
/// `config push`) or a precondition of `reverse`; nothing was written.
pub const REJECTED: i32 = 2;
/// Nothing to post: the source had no rows for the period (or only zero amounts); nothing was
/// written.
pub const NOTHING_TO_POST: i32 = 3;
/// Usage: the command line is wrong (unknown flag, missing argument) or asks for something
/// refused without an explicit flag (a period that has not ended); nothing was done. The
/// value of BSD's `EX_USAGE`, apart from clap's default of 2 (taken by "rejected").
pub const USAGE: i32 = 64;

/// The table as `--help` shows it.
pub const TABLE: &str = "\
Exit codes:
  0   done: posted, already posted, previewed, check passed, reversed, already reversed
      or nothing to reverse (the run wrote no journal)
  1   failed or needs attention (connection, login, D365, conflict, busy, interrupted,
      not found); the message says what to do
  2   rejected: data or config did not pass the checks; nothing written
  3   nothing to post: the source had no rows for the period; nothing written
  64  usage: wrong command line, or a period not ended yet without --allow-open-period";

/// The exit code of a run's outcome.
pub fn of(outcome: crate::engine::Outcome) -> i32 {
    use crate::engine::Outcome;
    match outcome {
        Outcome::Posted | Outcome::AlreadyPosted | Outcome::Previewed => OK,
        Outcome::Rejected => REJECTED,
        Outcome::NothingToPost => NOTHING_TO_POST,
        Outcome::Conflict
        | Outcome::Busy
        | Outcome::Failed
        | Outcome::Interrupted
        | Outcome::DuplicatePosted => FAILED,
    }
}

//! One clear, actionable notification per finished run: names the run, the instance, the
//! period, the journals and the fix. The CLI prints the fix; in AWS the JSON goes into the
//! structured log line (`notification` field) and [`crate::notify`] publishes the subject and
//! [`RunNotification::text`] to the stack's SNS topic and to the instance's Slack/Teams
//! webhooks: "journal usmf/00042 ready for review" as well as failures, conflicts, duplicates
//! and interrupted runs.

use serde::Serialize;

use crate::domain::run::{RunRecord, RunStatus};
use crate::store::{Store, StoreError};

/// Whether a run got through validation: it decides which fix works. Only lines that passed
/// validation may ever be sent, so replay refuses a run that stopped before (see
/// [`crate::engine::Engine::replay`]); such a run needs a new run instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Its plan was validated against D365 (a `validated` audit event): replay can finish it.
    Passed,
    /// It stopped before its validation finished: nothing of it was sent to D365.
    NotFinished,
}

/// Reads from `run_id`'s audit trail whether it passed validation. The one test for it: replay,
/// `reverse`, the CLI's hints and the notifications all ask here.
pub async fn validation(store: &dyn Store, run_id: &str) -> Result<Validation, StoreError> {
    let passed = store
        .events(run_id)
        .await?
        .iter()
        .any(|e| e.kind == crate::engine::VALIDATED_EVENT);
    Ok(if passed {
        Validation::Passed
    } else {
        Validation::NotFinished
    })
}

/// The commands a fix suggests, for where its reader runs them: locally (`--config FILE`, the
/// CLI fills in the real file and store), or against a deployed table (a Lambda's runs).
struct Commands<'a> {
    table: Option<&'a str>,
}

impl Commands<'_> {
    fn store(&self) -> String {
        self.table
            .map(|t| format!(" --table {t}"))
            .unwrap_or_default()
    }
    fn show(&self, id: &str) -> String {
        format!("ml-connector show {id}{}", self.store())
    }
    fn reverse(&self, id: &str) -> String {
        format!("ml-connector reverse {id} --config FILE{}", self.store())
    }
    fn run(&self) -> String {
        format!("ml-connector run --config FILE{}", self.store())
    }
    /// Locally from the config; for a deployed table, a request the replay Lambda picks up
    /// (no config file needed: the Lambda has the instance's config).
    fn replay(&self, id: &str) -> String {
        match self.table {
            Some(t) => format!("ml-connector replay {id} --request --table {t}"),
            None => format!("ml-connector replay {id} --config FILE"),
        }
    }
}

/// An SNS-ready event about a finished run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunNotification {
    /// Short subject line (SNS `Subject` is limited to 100 characters).
    pub subject: String,
    /// The first line people read: "journal usmf/00042 ready for review", "run … failed".
    pub headline: String,
    pub run_id: String,
    pub instance: String,
    pub period: String,
    pub outcome: String,
    /// What happened (the run's message).
    pub message: String,
    /// What to do about it, as commands.
    pub fix: String,
    pub journals: Vec<String>,
    /// Looker total, lines written and their debit/credit.
    pub totals: String,
    /// The command that shows the run's audit trail.
    pub show: String,
}

impl RunNotification {
    /// `None` for runs that need nothing from anyone (completed, already posted, in progress).
    /// Commands are local ones (`--config FILE`); `validation` is [`validation()`] of the run.
    pub fn for_run(run: &RunRecord, validation: Validation) -> Option<RunNotification> {
        match run.status {
            RunStatus::Completed => None,
            _ => Self::build(run, validation, None),
        }
    }

    /// What is published when a run finishes: the problems of [`RunNotification::for_run`]
    /// and, for a completed run, "journal … ready for review". `None` for a run that wrote
    /// nothing and needs nothing (already posted, busy: another run holds the period) or has
    /// not finished. With `table` (a Lambda's runs are in the deployed table) every command
    /// names it, and a replay is a `--request` the replay Lambda carries out.
    pub fn to_publish(
        run: &RunRecord,
        validation: Validation,
        table: Option<&str>,
    ) -> Option<RunNotification> {
        match run.status {
            RunStatus::Busy => None,
            _ => Self::build(run, validation, table),
        }
    }

    fn build(
        run: &RunRecord,
        validation: Validation,
        table: Option<&str>,
    ) -> Option<RunNotification> {
        let id = &run.run_id;
        let cmd = Commands { table };
        let journals: Vec<String> = run
            .journals
            .iter()
            .map(|(le, b)| format!("{le}/{b}"))
            .collect();
        let (show, reverse, replay, new_run) =
            (cmd.show(id), cmd.reverse(id), cmd.replay(id), cmd.run());
        let fix = match run.status {
            RunStatus::AlreadyPosted | RunStatus::Started | RunStatus::Posting => return None,
            // Replay refuses such a run: nothing of it was sent, a new run starts afresh.
            RunStatus::Failed | RunStatus::Interrupted
                if validation == Validation::NotFinished =>
            {
                format!(
                    "Nothing of run {id} reached D365: it stopped before its validation finished, so there is nothing to replay. Fix the cause named above, then start a new run with `{new_run}`; `{show}` shows what was recorded."
                )
            }
            RunStatus::Completed => format!(
                "Finance reviews the journal in D365 (General ledger > Journal entries > General journals: Validate, then Post). The connector never posts. Undo with `{reverse}`."
            ),
            RunStatus::Conflict => {
                let earlier = run
                    .message
                    .as_deref()
                    .and_then(|m| m.split("posted by run ").nth(1))
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_string);
                match earlier {
                    Some(e) => format!(
                        "Nothing was written. If the new data is right, undo the earlier posting: `{}` (posted journal → inverse journal; add `--delete-unposted` if it is still unposted), then run again. Compare first with `{} --config FILE`.",
                        cmd.reverse(&e),
                        cmd.show(&e)
                    ),
                    None => format!(
                        "Nothing was written. Undo the earlier journal named above with `{}` (the run that created it: `ml-connector trace` on one of its line texts), then run again.",
                        cmd.reverse("RUN_ID")
                    ),
                }
            }
            RunStatus::DuplicatePosted => format!(
                "D365 holds posted duplicates of this journal (named above); the connector never edits posted entries. Reverse the run's journals with `{reverse}`, then run the period again: it posts exactly one copy."
            ),
            RunStatus::Failed => format!(
                "Fix the cause named above, then `{replay}`: it re-reads D365 and posts only what is missing (never twice). `{show}` lists every line's state."
            ),
            RunStatus::Rejected => format!(
                "Nothing was written. `{show}` names each row/field with a problem; fix the data or the config (`ml-connector preview --config FILE` to check), then run again."
            ),
            RunStatus::Busy => "Nothing was written: another run holds this period's lock; the message names it, when its lock expires, and the command that resumes it if it stopped. Nothing to do while it is running.".to_string(),
            RunStatus::Interrupted if table.is_some() => format!(
                "The run stopped on purpose before its time ran out; what it wrote is recorded and the period lock is released. Finish it with `{replay}`: it re-reads D365 and posts only what is missing."
            ),
            RunStatus::Interrupted => format!(
                "The run stopped on purpose before its time ran out; what it wrote is recorded and the period lock is released. Finish it with `{replay}` (in AWS: `ml-connector replay {id} --request --table TABLE`): it re-reads D365 and posts only what is missing."
            ),
        };
        let outcome = run.status.as_str().to_string();
        let listed = if journals.is_empty() {
            String::new()
        } else {
            format!(" {}", journals.join(", "))
        };
        let headline = match run.status {
            RunStatus::Completed if journals.len() > 1 => {
                format!("journals{listed} ready for review")
            }
            RunStatus::Completed => format!("journal{listed} ready for review"),
            RunStatus::Conflict => "conflict: period already posted with other data".to_string(),
            RunStatus::DuplicatePosted => {
                format!("duplicates found: D365 holds posted duplicates of journal{listed}")
            }
            RunStatus::Interrupted => {
                format!("run {id} interrupted before its deadline; replay finishes it")
            }
            RunStatus::Rejected => format!("run {id} rejected: nothing was written"),
            RunStatus::Busy => format!("run {id} busy: another run holds the period"),
            _ => format!("run {id} failed"),
        };
        // Headline first: a long subject is cut at its end.
        let mut subject = format!(
            "ml-connector: {headline} ({} {}, run {id})",
            run.instance, run.period
        );
        if subject.chars().count() > 100 {
            // SNS wants ASCII in a subject: no ellipsis character.
            subject = subject.chars().take(97).collect::<String>() + "...";
        }
        let t = &run.totals;
        let totals = format!(
            "Looker total {}; {} of {} lines written (debit {}, credit {})",
            t.source_total, t.created_lines, t.journal_lines, t.created_debit, t.created_credit
        );
        Some(RunNotification {
            subject,
            headline,
            run_id: id.clone(),
            instance: run.instance.clone(),
            period: run.period.clone(),
            outcome,
            message: run.message.clone().unwrap_or_default(),
            fix,
            journals,
            totals,
            show,
        })
    }

    /// The short text body (SNS message, Slack/Teams text, e-mail).
    pub fn text(&self) -> String {
        let journals = if self.journals.is_empty() {
            "none".to_string()
        } else {
            self.journals.join(", ")
        };
        format!(
            "{}\nStatus: {}\nInstance: {}\nPeriod: {}\nRun: {}\nJournals: {journals}\nTotals: {}\n{}\nFix: {}\nDetails: {}",
            self.headline,
            self.outcome,
            self.instance,
            self.period,
            self.run_id,
            self.totals,
            self.message,
            self.fix,
            self.show
        )
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::run::{RunKeys, RunTotals};
    use crate::domain::source::SourceRef;

    fn run(status: RunStatus, message: &str) -> RunRecord {
        RunRecord {
            run_id: "r-2".into(),
            instance: "fees".into(),
            keys: RunKeys::derive("fees", "2026-W47", "x"),
            source: SourceRef::Look {
                look_id: "1".into(),
            },
            period: "2026-W47".into(),
            run_date: chrono::NaiveDate::from_ymd_opt(2026, 11, 24).unwrap(),
            config_version: "v".into(),
            trigger: "schedule".into(),
            status,
            totals: RunTotals::default(),
            journals: vec![],
            message: Some(message.into()),
            started_at: chrono::Utc::now(),
            finished_at: None,
        }
    }

    #[test]
    fn conflict_names_the_run_the_instance_and_the_reverse_command() {
        let n = RunNotification::for_run(
            &run(
                RunStatus::Conflict,
                "period 2026-W47 was already posted by run r-1 (journals usmf/00042, Looker total 30); …",
            ),
            Validation::Passed,
        )
        .unwrap();
        assert!(n.subject.contains("fees") && n.subject.contains("r-2"));
        assert!(
            n.fix.contains("ml-connector reverse r-1 --config FILE"),
            "{}",
            n.fix
        );
        assert!(n.to_json().contains("\"outcome\":\"conflict\""));
        assert!(n.text().contains("Fix: "));
    }

    #[test]
    fn failed_points_at_replay_and_success_needs_no_notification() {
        let failed = run(RunStatus::Failed, "D365 did not accept line 3");
        let n = RunNotification::for_run(&failed, Validation::Passed).unwrap();
        assert!(n.fix.contains("`ml-connector replay r-2 --config FILE`"));
        for status in [RunStatus::Completed, RunStatus::AlreadyPosted] {
            assert!(RunNotification::for_run(&run(status, "ok"), Validation::Passed).is_none());
        }
    }

    #[test]
    fn a_completed_run_is_published_as_ready_for_review() {
        let mut r = run(RunStatus::Completed, "posted 14 lines");
        r.journals = vec![("usmf".into(), "00042".into())];
        r.totals.source_total = "300.31".parse().unwrap();
        r.totals.journal_lines = 14;
        r.totals.created_lines = 14;
        r.totals.created_debit = "300.31".parse().unwrap();
        r.totals.created_credit = "300.31".parse().unwrap();
        let n = RunNotification::to_publish(&r, Validation::Passed, Some("mlc-audit")).unwrap();
        assert_eq!(n.headline, "journal usmf/00042 ready for review");
        assert_eq!(
            n.subject,
            "ml-connector: journal usmf/00042 ready for review (fees 2026-W47, run r-2)"
        );
        let text = n.text();
        for want in [
            "journal usmf/00042 ready for review\n",
            "Status: completed",
            "Instance: fees",
            "Period: 2026-W47",
            "Journals: usmf/00042",
            "Totals: Looker total 300.31; 14 of 14 lines written (debit 300.31, credit 300.31)",
            "Details: ml-connector show r-2 --table mlc-audit",
        ] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
        // Problems are published too; a busy or already-posted run is not.
        for (status, headline) in [
            (RunStatus::Failed, "run r-2 failed"),
            (RunStatus::Interrupted, "run r-2 interrupted"),
            (RunStatus::DuplicatePosted, "duplicates found"),
            (RunStatus::Conflict, "conflict:"),
            (RunStatus::Rejected, "run r-2 rejected"),
        ] {
            let n =
                RunNotification::to_publish(&run(status, "x"), Validation::Passed, None).unwrap();
            assert!(
                n.headline.starts_with(headline),
                "{status:?}: {}",
                n.headline
            );
            assert!(n.subject.len() <= 100 && n.subject.contains(headline));
        }
        for status in [RunStatus::Busy, RunStatus::AlreadyPosted] {
            assert!(
                RunNotification::to_publish(&run(status, "x"), Validation::Passed, None).is_none()
            );
        }
    }

    /// Replay refuses a run that stopped before its validation finished: its notification
    /// must not suggest it, wherever it is read (CLI or a Lambda's SNS/Slack/Teams message).
    #[test]
    fn a_run_that_never_finished_validation_is_not_sent_to_replay() {
        for status in [RunStatus::Failed, RunStatus::Interrupted] {
            for table in [None, Some("mlc-audit")] {
                let r = run(status, "Looker login failed: HTTP 401");
                let n = RunNotification::to_publish(&r, Validation::NotFinished, table).unwrap();
                assert!(
                    !n.fix.contains("replay r-2"),
                    "{status:?} {table:?}: {}",
                    n.fix
                );
                let new_run = match table {
                    Some(t) => format!("`ml-connector run --config FILE --table {t}`"),
                    None => "`ml-connector run --config FILE`".to_string(),
                };
                assert!(n.fix.contains(&new_run), "{status:?} {table:?}: {}", n.fix);
                // Validated, the same run is replayed.
                let n = RunNotification::to_publish(&r, Validation::Passed, table).unwrap();
                assert!(n.fix.contains("`ml-connector replay r-2 "), "{}", n.fix);
            }
        }
    }

    /// In a Lambda's notification every command names the deployed table, and replay is a
    /// request for the replay Lambda: no local config file is needed to run it as printed.
    #[test]
    fn a_lambda_notification_names_the_table_in_every_command() {
        let n = RunNotification::to_publish(
            &run(RunStatus::Failed, "D365 did not accept line 3"),
            Validation::Passed,
            Some("mlc-audit"),
        )
        .unwrap();
        assert_eq!(
            n.fix,
            "Fix the cause named above, then `ml-connector replay r-2 --request --table mlc-audit`: it re-reads D365 and posts only what is missing (never twice). `ml-connector show r-2 --table mlc-audit` lists every line's state."
        );
        let n = RunNotification::to_publish(
            &run(RunStatus::DuplicatePosted, "x"),
            Validation::Passed,
            Some("mlc-audit"),
        )
        .unwrap();
        assert!(
            n.fix
                .contains("`ml-connector reverse r-2 --config FILE --table mlc-audit`"),
            "{}",
            n.fix
        );
        assert_eq!(n.show, "ml-connector show r-2 --table mlc-audit");
    }
}

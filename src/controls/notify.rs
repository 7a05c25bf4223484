//! One clear, actionable notification for a run that did not end well: names the run, the
//! instance and the fix. The CLI prints `text()`; in AWS the same JSON goes into the structured
//! log line (`notification` field) and can be published to the alarm SNS topic as is.

use serde::Serialize;

use crate::domain::run::{RunRecord, RunStatus};

/// An SNS-ready event about a failed, conflicting, rejected, busy or interrupted run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunNotification {
    /// Short subject line (SNS `Subject` is limited to 100 characters).
    pub subject: String,
    pub run_id: String,
    pub instance: String,
    pub period: String,
    pub outcome: String,
    /// What happened (the run's message).
    pub message: String,
    /// What to do about it, as commands.
    pub fix: String,
    pub journals: Vec<String>,
}

impl RunNotification {
    /// `None` for runs that need nothing from anyone (completed, already posted, in progress).
    pub fn for_run(run: &RunRecord) -> Option<RunNotification> {
        let id = &run.run_id;
        let fix = match run.status {
            RunStatus::Completed
            | RunStatus::AlreadyPosted
            | RunStatus::Started
            | RunStatus::Posting => return None,
            RunStatus::Conflict => {
                let earlier = run
                    .message
                    .as_deref()
                    .and_then(|m| m.split("posted by run ").nth(1))
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_string);
                match earlier {
                    Some(e) => format!(
                        "Nothing was written. If the new data is right, undo the earlier posting: `ml-connector reverse {e} --config FILE` (posted journal → inverse journal; add `--delete-unposted` if it is still unposted), then run again. Compare first with `ml-connector show {e} --config FILE`."
                    ),
                    None => "Nothing was written. Undo the earlier journal named above with `ml-connector reverse RUN_ID --config FILE` (the run that created it: `ml-connector trace` on one of its line texts), then run again.".to_string(),
                }
            }
            RunStatus::DuplicatePosted => format!(
                "D365 holds posted duplicates of this journal (named above); the connector never edits posted entries. Reverse the run's journals with `ml-connector reverse {id} --config FILE`, then run the period again: it posts exactly one copy."
            ),
            RunStatus::Failed => format!(
                "Fix the cause named above, then `ml-connector replay {id} --config FILE`: it re-reads D365 and posts only what is missing (never twice). `ml-connector show {id}` lists every line's state."
            ),
            RunStatus::Rejected => format!(
                "Nothing was written. `ml-connector show {id}` names each row/field with a problem; fix the data or the config (`ml-connector preview --config FILE` to check), then run again."
            ),
            RunStatus::Busy => "Nothing was written: another run holds this period's lock; the message names it, when its lock expires, and the command that resumes it if it stopped. Nothing to do while it is running.".to_string(),
            RunStatus::Interrupted => format!(
                "The run stopped on purpose before its time ran out; what it wrote is recorded and the period lock is released. Finish it with `ml-connector replay {id} --config FILE` (in AWS: `ml-connector replay {id} --request --table TABLE`): it re-reads D365 and posts only what is missing."
            ),
        };
        let outcome = run.status.as_str().to_string();
        let mut subject = format!(
            "ml-connector {}: {} run {} ({})",
            run.instance, outcome, id, run.period
        );
        if subject.chars().count() > 100 {
            subject = subject.chars().take(100).collect();
        }
        Some(RunNotification {
            subject,
            run_id: id.clone(),
            instance: run.instance.clone(),
            period: run.period.clone(),
            outcome,
            message: run.message.clone().unwrap_or_default(),
            fix,
            journals: run
                .journals
                .iter()
                .map(|(le, b)| format!("{le}/{b}"))
                .collect(),
        })
    }

    /// The human message (CLI, e-mail body).
    pub fn text(&self) -> String {
        format!("{}\n{}\nFix: {}", self.subject, self.message, self.fix)
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
        let n = RunNotification::for_run(&run(
            RunStatus::Conflict,
            "period 2026-W47 was already posted by run r-1 (journals usmf/00042, Looker total 30); …",
        ))
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
        let n = RunNotification::for_run(&run(RunStatus::Failed, "D365 did not accept line 3"))
            .unwrap();
        assert!(n.fix.contains("ml-connector replay r-2"));
        assert!(RunNotification::for_run(&run(RunStatus::Completed, "ok")).is_none());
        assert!(RunNotification::for_run(&run(RunStatus::AlreadyPosted, "ok")).is_none());
    }
}

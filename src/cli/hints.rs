//! Commands suggested by messages, made runnable as printed.
//!
//! Library messages (engine, controls, notifications) cannot know which config file and which
//! audit store the user gave, so they write `--config FILE`. The CLI knows both: it fills them
//! into every backtick-quoted `ml-connector …` command before printing, so each suggestion can
//! be copied and run as is.

use std::path::{Path, PathBuf};

/// Where the audit trail of this invocation lives, as a flag to repeat in suggested commands.
#[derive(Debug, Clone)]
pub enum StoreArg {
    Sqlite(PathBuf),
    Table(String),
}

impl StoreArg {
    /// The flag (and value) that names this store on a command line.
    pub fn flag(&self) -> String {
        match self {
            StoreArg::Sqlite(p) => format!("--store {}", shell_word(&p.display().to_string())),
            StoreArg::Table(t) => format!("--table {}", shell_word(t)),
        }
    }
}

/// The context a suggested command needs to run as printed.
#[derive(Debug, Clone)]
pub struct Hints {
    pub config: Option<PathBuf>,
    pub store: StoreArg,
}

/// Subcommands that read or write the audit store (and so need to be pointed at the same one).
const STORE_COMMANDS: [&str; 6] = ["show", "replay", "reverse", "runs", "trace", "run"];

impl Hints {
    pub fn new(config: Option<&Path>, store: StoreArg) -> Self {
        Self {
            config: config.map(Path::to_path_buf),
            store,
        }
    }

    /// Fills the real config file and store into every `` `ml-connector …` `` command of `text`.
    pub fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 64);
        for (i, part) in text.split('`').enumerate() {
            if i > 0 {
                out.push('`');
            }
            if i % 2 == 1 && part.starts_with("ml-connector ") {
                out.push_str(&self.command(part));
            } else {
                out.push_str(part);
            }
        }
        out
    }

    fn command(&self, cmd: &str) -> String {
        let mut c = cmd.to_string();
        if let Some(cfg) = &self.config {
            c = c.replace(
                "--config FILE",
                &format!("--config {}", shell_word(&cfg.display().to_string())),
            );
        }
        let sub = c.split_whitespace().nth(1).unwrap_or_default();
        let aws_request = c.contains("--request");
        if STORE_COMMANDS.contains(&sub)
            && !aws_request
            && !c.contains("--store")
            && !c.contains("--table")
        {
            c.push(' ');
            c.push_str(&self.store.flag());
        }
        c
    }
}

/// `s` as one shell word: unchanged when it holds only safe characters, else single-quoted.
pub fn shell_word(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_config_and_store_into_quoted_commands_only() {
        let h = Hints::new(
            Some(Path::new("/tmp/my cfg.toml")),
            StoreArg::Sqlite("/tmp/a.sqlite".into()),
        );
        let t = h.apply(
            "Fix: `ml-connector replay r-1 --config FILE` then ml-connector show r-1; `ml-connector show r-1`. AWS: `ml-connector replay r-1 --request --table TABLE`",
        );
        assert_eq!(
            t,
            "Fix: `ml-connector replay r-1 --config '/tmp/my cfg.toml' --store /tmp/a.sqlite` then ml-connector show r-1; `ml-connector show r-1 --store /tmp/a.sqlite`. AWS: `ml-connector replay r-1 --request --table TABLE`"
        );
    }

    #[test]
    fn preview_and_check_get_no_store() {
        let h = Hints::new(Some(Path::new("c.toml")), StoreArg::Table("t".into()));
        assert_eq!(
            h.apply("`ml-connector preview --config FILE`"),
            "`ml-connector preview --config c.toml`"
        );
        assert_eq!(
            h.apply("`ml-connector runs`"),
            "`ml-connector runs --table t`"
        );
    }
}

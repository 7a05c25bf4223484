//! Which audit store a command uses, so every command of a user finds the same one wherever it
//! is run from: `--store PATH`, else `MLC_STORE`, else the config's `store` (relative to the
//! config file), else `audit.sqlite` in the per-user data directory. The path is made absolute,
//! so the commands the CLI suggests work from any directory.

use std::path::{Path, PathBuf};

/// The environment variable naming the store.
pub const ENV: &str = "MLC_STORE";

/// Where the resolved store came from (said by commands that read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
    Config,
    Default,
}

impl Origin {
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Flag => "--store",
            Origin::Env => "MLC_STORE",
            Origin::Config => "the config's `store`",
            Origin::Default => "the per-user default",
        }
    }
}

/// Resolves the store path; `config` is the config file the command was given, if any.
pub fn resolve(
    flag: Option<&Path>,
    env: Option<String>,
    config: Option<&Path>,
) -> (PathBuf, Origin) {
    let (path, origin) = if let Some(p) = flag {
        (p.to_path_buf(), Origin::Flag)
    } else if let Some(p) = env.filter(|v| !v.is_empty()) {
        (PathBuf::from(p), Origin::Env)
    } else if let Some((p, cfg)) = config.and_then(|c| config_store(c).map(|p| (p, c))) {
        let p = PathBuf::from(p);
        let p = if p.is_relative() {
            cfg.parent().unwrap_or_else(|| Path::new(".")).join(p)
        } else {
            p
        };
        (p, Origin::Config)
    } else {
        (default_path(), Origin::Default)
    };
    (std::path::absolute(&path).unwrap_or(path), origin)
}

/// The `store` key of a config file, read leniently: a config that does not parse is reported
/// by the command when it loads it.
fn config_store(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table.get("store")?.as_str().map(str::to_string)
}

/// `audit.sqlite` in the per-user data directory (XDG on Linux, Application Support on macOS,
/// `%APPDATA%` on Windows); `.ml-connector/audit.sqlite` if no home directory is known.
pub fn default_path() -> PathBuf {
    data_dir()
        .map(|d| d.join("ml-connector").join("audit.sqlite"))
        .unwrap_or_else(|| PathBuf::from(".ml-connector/audit.sqlite"))
}

fn data_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if cfg!(windows) {
        return var("APPDATA");
    }
    if cfg!(target_os = "macos") {
        return var("HOME").map(|h| h.join("Library/Application Support"));
    }
    var("XDG_DATA_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| var("HOME").map(|h| h.join(".local/share")))
}

/// A warning when a credentials file can be read by other users than its owner.
#[cfg(unix)]
pub fn credentials_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "warning: credentials file {} is readable by other users (mode {mode:o}); restrict it with `chmod 600 {}`",
            path.display(),
            path.display()
        )
    })
}

#[cfg(not(unix))]
pub fn credentials_warning(_path: &Path) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_env_beats_config_and_paths_become_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "instance = \"x\"\nstore = \"audit/s.sqlite\"\n").unwrap();
        let (p, o) = resolve(
            Some(Path::new("a.sqlite")),
            Some("/e.sqlite".into()),
            Some(&cfg),
        );
        assert_eq!(o, Origin::Flag);
        assert!(p.is_absolute() && p.ends_with("a.sqlite"));
        assert_eq!(
            resolve(None, Some("/e.sqlite".into()), Some(&cfg)),
            (PathBuf::from("/e.sqlite"), Origin::Env)
        );
        assert_eq!(
            resolve(None, None, Some(&cfg)),
            (dir.path().join("audit/s.sqlite"), Origin::Config)
        );
        assert_eq!(resolve(None, None, None).1, Origin::Default);
    }
}

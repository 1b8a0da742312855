//! `service-lb run --config FILE`: a YAML file whose keys are `run`'s long flag names
//! (`metrics-addr: "[::]:9249"`, `pod-interfaces: [veth*, cali*]`, `resync-interval: 1m30s`).
//!
//! Generic over clap's definition: the file's entries become `--name=value` arguments,
//! inserted after `run` unless the same flag is on the command line or its `SERVICE_LB_*`
//! variable is set. So every flag, including ones added later, is covered with no code
//! here, and the precedence is: command line > environment > file > default. Unknown keys
//! are usage errors (a typo must not be silently ignored).
//!
//! `run --print-config` prints the effective configuration (every flag, its value and where
//! it came from) as YAML that `--config` reads back.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{parser::ValueSource, ArgAction, ArgMatches, Command};

/// The flag naming the file, and its variable.
pub const CONFIG_FLAG: &str = "config";
pub const CONFIG_ENV: &str = "SERVICE_LB_CONFIG";
/// Flags of `run` that the file cannot set (they are about the file itself).
const NOT_IN_FILE: [&str; 3] = [CONFIG_FLAG, "print-config", "help"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigFileError {
    #[error("--config {path}: {error}")]
    Read { path: PathBuf, error: String },
    #[error("--config {path}: not a YAML mapping of `run` flag names to values")]
    NotAMapping { path: PathBuf },
    #[error("--config {path}: unknown setting {key:?} (the keys are `service-lb run` flag names, e.g. metrics-addr)")]
    UnknownKey { path: PathBuf, key: String },
    #[error("--config {path}: {key}: {problem}")]
    BadValue {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// What `apply` did: the new argument list and the flags the file set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub argv: Vec<OsString>,
    pub from_file: BTreeSet<String>,
    pub file: Option<PathBuf>,
}

/// The `run` subcommand of `cli`, built (so globals and defaults are resolved).
fn run_command(cli: &Command) -> Option<Command> {
    let mut cli = cli.clone();
    cli.build();
    cli.find_subcommand("run").cloned()
}

/// Where `run` is in `argv` and the `--config` value that follows it, if any.
fn find_config(
    cli: &Command,
    argv: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(usize, Option<PathBuf>)> {
    // Only for `run` itself (not, say, `inspect --bpffs run`): clap decides.
    let subcommand = cli
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(argv)
        .ok()?
        .subcommand_name()
        .map(str::to_owned);
    if subcommand.as_deref() != Some("run") {
        return None;
    }
    let run_at = argv.iter().skip(1).position(|a| a == "run")? + 1;
    let mut file = None;
    let mut i = run_at + 1;
    while i < argv.len() {
        let arg = argv[i].to_string_lossy();
        if arg == "--" {
            break;
        }
        if let Some(value) = arg.strip_prefix("--config=") {
            file = Some(PathBuf::from(value));
        } else if arg == "--config" {
            file = argv.get(i + 1).map(PathBuf::from);
            i += 1;
        }
        i += 1;
    }
    let file = file.or_else(|| env(CONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from));
    Some((run_at, file))
}

/// The long flags given on the command line after `run` (`--name` or `--name=value`).
fn flags_on_command_line(argv: &[OsString], run_at: usize) -> BTreeSet<String> {
    argv[run_at + 1..]
        .iter()
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .filter_map(|a| {
            let name = a.strip_prefix("--")?;
            Some(name.split('=').next().unwrap_or(name).to_owned())
        })
        .collect()
}

fn scalar(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Inserts the file's settings into `argv` (see the module's documentation). `env` reads
/// an environment variable (injectable for tests).
pub fn apply(
    cli: &Command,
    argv: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Applied, ConfigFileError> {
    let Some((run_at, Some(path))) = find_config(cli, &argv, env) else {
        return Ok(Applied {
            argv,
            ..Applied::default()
        });
    };
    let run = run_command(cli).ok_or_else(|| ConfigFileError::Read {
        path: path.clone(),
        error: "no run subcommand".into(),
    })?;
    let settings = read(&path)?;
    let given = flags_on_command_line(&argv, run_at);
    let mut inserted = Vec::new();
    let mut from_file = BTreeSet::new();
    for (key, value) in settings {
        let arg = run
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !NOT_IN_FILE.contains(&key.as_str()))
            .ok_or_else(|| ConfigFileError::UnknownKey {
                path: path.clone(),
                key: key.clone(),
            })?;
        let bad = |problem: &str| ConfigFileError::BadValue {
            path: path.clone(),
            key: key.clone(),
            problem: problem.to_owned(),
        };
        let env_set = arg
            .get_env()
            .and_then(|e| e.to_str())
            .and_then(env)
            .is_some_and(|v| !v.is_empty());
        if given.contains(&key) || env_set || value.is_null() {
            continue;
        }
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                serde_json::Value::Bool(true) => inserted.push(OsString::from(format!("--{key}"))),
                // Leaves the default (false).
                serde_json::Value::Bool(false) => continue,
                _ => return Err(bad("must be true or false")),
            },
            ArgAction::Count => {
                let n = value
                    .as_u64()
                    .filter(|n| *n <= 8)
                    .ok_or_else(|| bad("must be a count (0 to 8)"))?;
                if n == 0 {
                    continue;
                }
                for _ in 0..n {
                    inserted.push(OsString::from(format!("--{key}")));
                }
            }
            ArgAction::Set | ArgAction::Append => {
                let text = match &value {
                    serde_json::Value::Array(items) => items
                        .iter()
                        .map(|v| scalar(v).ok_or_else(|| bad("list items must be scalars")))
                        .collect::<Result<Vec<_>, _>>()?
                        .join(","),
                    v => scalar(v).ok_or_else(|| bad("must be a scalar or a list"))?,
                };
                inserted.push(OsString::from(format!("--{key}={text}")));
            }
            _ => return Err(bad("cannot be set from a file")),
        }
        from_file.insert(key);
    }
    let mut argv = argv;
    let tail = argv.split_off(run_at + 1);
    argv.extend(inserted);
    argv.extend(tail);
    Ok(Applied {
        argv,
        from_file,
        file: Some(path),
    })
}

fn read(path: &Path) -> Result<BTreeMap<String, serde_json::Value>, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError::Read {
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let value: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|e| ConfigFileError::Read {
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
    match value {
        serde_json::Value::Object(map) => Ok(map.into_iter().collect()),
        serde_json::Value::Null => Ok(BTreeMap::new()),
        _ => Err(ConfigFileError::NotAMapping {
            path: path.to_path_buf(),
        }),
    }
}

/// The effective configuration of `run` as YAML `--config` reads back: every flag with a
/// value, in definition order, with where the value came from.
pub fn effective_yaml(
    cli: &Command,
    run_matches: &ArgMatches,
    from_file: &BTreeSet<String>,
) -> String {
    let Some(run) = run_command(cli) else {
        return String::new();
    };
    let mut out = String::from("# service-lb run: effective configuration (source in comments)\n");
    for arg in run.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILE.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = match run_matches.value_source(id) {
            Some(ValueSource::CommandLine) if from_file.contains(long) => "file",
            Some(ValueSource::CommandLine) => "command line",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default",
            Some(_) => "other",
            None => "unset",
        };
        let values: Vec<String> = run_matches
            .get_raw(id)
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let rendered = match arg.get_action() {
            ArgAction::SetTrue => run_matches.get_flag(id).to_string(),
            ArgAction::Count => run_matches.get_count(id).to_string(),
            _ if values.is_empty() => "null".to_owned(),
            _ if arg.get_value_delimiter().is_some() || values.len() > 1 => format!(
                "[{}]",
                values
                    .iter()
                    .map(|v| quote(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => quote(&values[0]),
        };
        out.push_str(&format!("{long}: {rendered}  # {source}\n"));
    }
    out
}

/// A YAML double-quoted string.
fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;
    use crate::cli::Cli;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn file_entries_go_after_run_unless_the_flag_or_its_variable_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "resync-interval: 2m\nmin-sync-interval: 1s\nnode-name: n9\n\
             recreate-mismatched-maps: true\nskip-feature-check: false\n\
             external-interfaces: [eth0, ens*]\nkubeconfig: null\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let env = |name: &str| (name == "SERVICE_LB_NODE_NAME").then(|| "from-env".to_owned());
        let argv = os(&[
            "service-lb",
            "-v",
            "run",
            "--config",
            f,
            "--min-sync-interval=5s",
        ]);
        let applied = apply(&Cli::command(), argv, &env).unwrap();
        assert_eq!(
            applied.argv,
            os(&[
                "service-lb",
                "-v",
                "run",
                "--external-interfaces=eth0,ens*",
                "--recreate-mismatched-maps",
                "--resync-interval=2m",
                "--config",
                f,
                "--min-sync-interval=5s",
            ]),
            "node-name: its variable is set; min-sync-interval: on the command line"
        );
        assert_eq!(
            applied.from_file.into_iter().collect::<Vec<_>>(),
            [
                "external-interfaces",
                "recreate-mismatched-maps",
                "resync-interval"
            ]
        );
    }

    #[test]
    fn without_a_file_or_outside_run_nothing_changes() {
        let none = |_: &str| None;
        for argv in [
            os(&["service-lb", "run", "--print-config"]),
            os(&["service-lb", "inspect", "services"]),
            os(&["service-lb", "run", "--", "--config"]),
        ] {
            let applied = apply(&Cli::command(), argv.clone(), &none).unwrap();
            assert_eq!(applied.argv, argv);
            assert!(applied.file.is_none());
        }
        let env = |name: &str| (name == CONFIG_ENV).then(|| "/nonexistent/x.yaml".to_owned());
        let other = os(&["service-lb", "inspect", "services", "--bpffs", "run"]);
        let applied = apply(&Cli::command(), other.clone(), &env).unwrap();
        assert_eq!(
            applied.argv, other,
            "a value named run is not the run subcommand"
        );
        let err = apply(&Cli::command(), os(&["service-lb", "run"]), &env).unwrap_err();
        assert!(matches!(err, ConfigFileError::Read { .. }), "{err}");
    }
}

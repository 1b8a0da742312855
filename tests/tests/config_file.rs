//! `service-lb run --config FILE` and `--print-config`, through the real binary: every flag
//! can come from the file, the precedence is command line > SERVICE_LB_* > file > default,
//! durations are Go/Kubernetes style, and the printed configuration reads back as a file.
//! (`--print-config` exits before anything touches the system: no root needed.)

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Output},
};

use clap::CommandFactory as _;
use service_lb::cli::Cli;
use service_lb_tests::daemon::service_lb_binary;

struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Self {
        Self(tempfile::tempdir().expect("scratch folder"))
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).expect("writing the config file");
        path
    }
}

/// `service-lb run <args> --print-config` with exactly `env` as SERVICE_LB_* environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(service_lb_binary().expect("the binary"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SERVICE_LB_") || key == "NODE_NAME" {
            cmd.env_remove(key);
        }
    }
    cmd.arg("run").args(args).envs(env.iter().copied());
    cmd.output().expect("the binary runs")
}

/// The printed configuration: flag -> (value as YAML text, source).
fn printed(out: &Output) -> BTreeMap<String, (String, String)> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let (setting, source) = line.rsplit_once("  # ").expect("a source comment");
            let (key, value) = setting.split_once(": ").expect("key: value");
            (key.to_owned(), (value.to_owned(), source.to_owned()))
        })
        .collect()
}

fn get<'a>(config: &'a BTreeMap<String, (String, String)>, key: &str) -> (&'a str, &'a str) {
    let (value, source) = config
        .get(key)
        .unwrap_or_else(|| panic!("{key} not printed"));
    (value.as_str(), source.as_str())
}

/// `run`'s long flags, from clap (the file must cover each one).
fn run_flags() -> Vec<String> {
    let mut cli = Cli::command();
    cli.build();
    let run = cli.find_subcommand("run").expect("run").clone();
    run.get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .filter(|l| !["config", "print-config", "help"].contains(&l.as_str()))
        .collect()
}

#[test]
fn defaults_are_printed_for_every_flag() {
    let config = printed(&run(&["--print-config"], &[]));
    let flags = run_flags();
    assert!(flags.len() >= 15, "{flags:?}");
    for flag in &flags {
        assert!(config.contains_key(flag), "--{flag} is not printed");
    }
    assert_eq!(get(&config, "resync-interval"), ("\"60s\"", "default"));
    assert_eq!(get(&config, "metrics-addr"), ("\"[::]:9249\"", "default"));
    assert_eq!(
        get(&config, "pod-interfaces"),
        ("[\"veth*\", \"lxc*\", \"cali*\"]", "default")
    );
    assert_eq!(get(&config, "skip-feature-check"), ("false", "default"));
    assert_eq!(get(&config, "verbose"), ("0", "default"));
}

#[test]
fn command_line_beats_environment_beats_file_beats_default() {
    let scratch = Scratch::new();
    let file = scratch.file(
        "config.yaml",
        "resync-interval: 1m30s\nmin-sync-interval: 250ms\nmanifests-debounce: 1s\n\
         metrics-addr: \"[::]:19249\"\npod-interfaces: [cali*, veth*]\n\
         skip-feature-check: true\nmap-ct-tcp-max: 4096\n",
    );
    let f = file.to_str().unwrap();
    /// Arguments, environment, expected value and source.
    type Layer<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str, &'a str);
    let layers: [Layer; 4] = [
        (&[], &[], "\"60s\"", "default"),
        (&["--config", f], &[], "\"1m30s\"", "file"),
        (
            &["--config", f],
            &[("SERVICE_LB_RESYNC_INTERVAL", "2m")],
            "\"2m\"",
            "environment",
        ),
        (
            &["--config", f, "--resync-interval=3m"],
            &[("SERVICE_LB_RESYNC_INTERVAL", "2m")],
            "\"3m\"",
            "command line",
        ),
    ];
    for (args, env, value, source) in layers {
        let mut args = args.to_vec();
        args.push("--print-config");
        let config = printed(&run(&args, env));
        assert_eq!(
            get(&config, "resync-interval"),
            (value, source),
            "{args:?} {env:?}"
        );
    }
    // The other settings of the file, each parsed by its own flag.
    let config = printed(&run(&["--config", f, "--print-config"], &[]));
    assert_eq!(get(&config, "min-sync-interval"), ("\"250ms\"", "file"));
    assert_eq!(get(&config, "metrics-addr"), ("\"[::]:19249\"", "file"));
    assert_eq!(
        get(&config, "pod-interfaces"),
        ("[\"cali*\", \"veth*\"]", "file")
    );
    assert_eq!(get(&config, "skip-feature-check"), ("true", "file"));
    assert_eq!(get(&config, "map-ct-tcp-max"), ("\"4096\"", "file"));
    // SERVICE_LB_CONFIG names the file too.
    let config = printed(&run(&["--print-config"], &[("SERVICE_LB_CONFIG", f)]));
    assert_eq!(get(&config, "resync-interval"), ("\"1m30s\"", "file"));
}

#[test]
fn the_printed_configuration_reads_back_as_a_file_covering_every_flag() {
    let scratch = Scratch::new();
    let first = run(
        &[
            "--print-config",
            "--resync-interval=1m30s",
            "--node-name=n7",
            "-vv",
            "--log-format=json",
        ],
        &[("SERVICE_LB_MAP_REVNAT_MAX", "512")],
    );
    let text = String::from_utf8_lossy(&first.stdout).into_owned();
    let before = printed(&first);
    let file = scratch.file("printed.yaml", &text);
    let again = printed(&run(
        &["--config", file.to_str().unwrap(), "--print-config"],
        &[],
    ));
    for flag in run_flags() {
        let (value, source) = get(&before, &flag);
        let (value_again, source_again) = get(&again, &flag);
        assert_eq!(value_again, value, "--{flag}");
        if ["null", "false", "0"].contains(&value) {
            // Nothing to set: the file leaves the default.
            continue;
        }
        assert_eq!(source_again, "file", "--{flag} (was {source})");
    }
    assert_eq!(get(&again, "node-name"), ("\"n7\"", "file"));
    assert_eq!(get(&again, "map-revnat-max"), ("\"512\"", "file"));
    assert_eq!(get(&again, "verbose"), ("2", "file"));
    assert_eq!(get(&again, "log-format"), ("\"json\"", "file"));
}

#[test]
fn bad_files_are_usage_errors_that_name_the_problem() {
    let scratch = Scratch::new();
    let cases: [(&str, &[&str]); 5] = [
        (
            "metrics-adr: \"[::]:1\"\n",
            &["unknown setting", "metrics-adr"],
        ),
        ("resync-interval: 1d\n", &["1d", "unknown unit"]),
        ("- a\n- b\n", &["not a YAML mapping"]),
        (
            "skip-feature-check: maybe\n",
            &["skip-feature-check", "true or false"],
        ),
        (
            "pod-interfaces: {a: b}\n",
            &["pod-interfaces", "scalar or a list"],
        ),
    ];
    for (text, words) in cases {
        let file = scratch.file("bad.yaml", text);
        let out = run(&["--config", file.to_str().unwrap(), "--print-config"], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{text:?} -> {}: {stderr}", out.status);
        assert_eq!(out.status.code(), Some(64), "{text:?}");
        for word in words {
            assert!(stderr.contains(word), "{text:?}: {word:?} not in {stderr}");
        }
    }
    let missing = run(
        &["--config", "/nonexistent/slb.yaml", "--print-config"],
        &[],
    );
    assert_eq!(missing.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/slb.yaml"));
}

#[test]
fn every_duration_flag_takes_go_durations() {
    let mut cli = Cli::command();
    cli.build();
    let run_cmd = cli.find_subcommand("run").expect("run").clone();
    // A duration flag is one whose default parses as a duration with a unit.
    let durations: Vec<String> = run_cmd
        .get_arguments()
        .filter(|a| {
            a.get_default_values().first().is_some_and(|d| {
                let d = d.to_string_lossy();
                d.ends_with('s') && d.chars().next().is_some_and(|c| c.is_ascii_digit())
            })
        })
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    assert!(durations.len() >= 3, "{durations:?}");
    let scratch = Scratch::new();
    let text: String = durations.iter().map(|d| format!("{d}: 1h2m3s\n")).collect();
    let file = scratch.file("durations.yaml", &text);
    // min-sync-interval <= resync-interval holds (equal); --print-config parses every one.
    let out = run(&["--config", file.to_str().unwrap(), "--print-config"], &[]);
    let config = printed(&out);
    for d in &durations {
        assert_eq!(get(&config, d), ("\"1h2m3s\"", "file"), "--{d}");
    }
    // And a wrong one is refused by each flag's parser.
    for d in &durations {
        let out = run(&[&format!("--{d}=1h2x"), "--print-config"], &[]);
        assert_eq!(out.status.code(), Some(64), "--{d}=1h2x accepted");
    }
}

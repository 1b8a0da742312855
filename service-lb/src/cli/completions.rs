//! `service-lb completions <shell>` and `service-lb man`: shell completions and a roff man
//! page generated from the clap definition (so they never drift from the flags).

use std::io::Write;

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::{Cli, Failure};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell. E.g. `service-lb completions bash >
    /// /etc/bash_completion.d/service-lb`.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(shell: Shell, out: &mut dyn Write) {
    let mut cli = Cli::command();
    clap_complete::generate(shell, &mut cli, "service-lb", out);
}

/// Writes the man page (`service-lb.1`, with every subcommand's flags) to `out`.
pub fn write_man(out: &mut dyn Write) -> std::io::Result<()> {
    let cli = Cli::command();
    clap_mangen::Man::new(cli.clone()).render(out)?;
    // One section per subcommand, as `service-lb help <subcommand>` shows it.
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        writeln!(out, ".SH \"SERVICE-LB {}\"", sub.get_name().to_uppercase())?;
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone()).render(&mut page)?;
        // The embedded page without its own title header.
        let text = String::from_utf8_lossy(&page);
        for line in text.lines().filter(|l| !l.starts_with(".TH ")) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

pub fn run_completions(args: &CompletionsArgs) -> Result<(), Failure> {
    write_completions(args.shell, &mut std::io::stdout().lock());
    Ok(())
}

pub fn run_man() -> Result<(), Failure> {
    write_man(&mut std::io::stdout().lock())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_that_knows_the_subcommands_and_flags() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let mut out = Vec::new();
            write_completions(shell, &mut out);
            let text = String::from_utf8(out).expect("UTF-8");
            for word in [
                "cleanup-kube-proxy",
                "inspect",
                "print-config",
                "metrics-addr",
            ] {
                assert!(text.contains(word), "{shell}: {word} missing");
            }
        }
    }

    #[test]
    fn the_man_page_documents_every_subcommand_and_run_flag() {
        let mut out = Vec::new();
        write_man(&mut out).expect("renders");
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(
            text.starts_with(".ie") || text.contains(".TH service-lb"),
            "roff header"
        );
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            // roff escapes '-' as '\-'.
            let escaped = sub.get_name().replace('-', "\\-");
            assert!(text.contains(&escaped), "{} missing", sub.get_name());
        }
        let run = cli.find_subcommand("run").expect("run");
        for arg in run.get_arguments() {
            if let Some(long) = arg.get_long() {
                // roff escapes '-' as '\-'.
                let escaped = format!("\\-\\-{}", long.replace('-', "\\-"));
                assert!(text.contains(&escaped), "--{long} missing");
            }
        }
    }
}

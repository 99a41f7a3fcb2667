//! `cargo xtask`: project chores that need more than one cargo invocation or a fixed set of flags.

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Xtask {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the criterion benchmarks (release build), optionally only those matching FILTER.
    Bench {
        /// Criterion benchmark name filter (a regular expression).
        filter: Option<String>,
        /// Time per benchmark, in seconds (criterion's --measurement-time).
        #[arg(long)]
        seconds: Option<u32>,
    },
}

fn main() -> ExitCode {
    let result = match Xtask::parse().command {
        Task::Bench { filter, seconds } => run(bench_command(filter.as_deref(), seconds)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench_command(filter: Option<&str>, seconds: Option<u32>) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["bench", "--package", "fastscnn-benches", "--benches", "--"]);
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    if let Some(seconds) = seconds {
        cmd.args(["--measurement-time", &seconds.to_string()]);
    }
    cmd
}

fn run(mut cmd: Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn bench_runs_the_bench_crate_with_filter_and_time() {
        let cmd = bench_command(Some("depthwise"), Some(3));
        assert_eq!(
            args(&cmd),
            [
                "bench",
                "--package",
                "fastscnn-benches",
                "--benches",
                "--",
                "depthwise",
                "--measurement-time",
                "3"
            ]
        );
        assert_eq!(
            args(&bench_command(None, None)),
            ["bench", "--package", "fastscnn-benches", "--benches", "--"]
        );
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Xtask::command().debug_assert();
    }
}

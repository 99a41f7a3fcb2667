//! `cargo xtask`: project chores that need more than one cargo invocation or a fixed set of flags.
//! Weights are fetched by `fastscnn download`; `convert` is here for checkpoints already on disk.

mod bench_table;

use std::path::{Path, PathBuf};
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
    /// Run the criterion benchmarks (release build), optionally only those matching FILTER, then
    /// print the whole-model table (ms and fps at 1024x2048, 512x1024, 256x512).
    Bench {
        /// Criterion benchmark name filter (a regular expression).
        filter: Option<String>,
        /// Time per benchmark, in seconds (criterion's --measurement-time).
        #[arg(long)]
        seconds: Option<u32>,
    },
    /// Time each module of one forward pass (release build).
    Profile {
        /// Input size, HEIGHTxWIDTH.
        #[arg(long, default_value = "1024x2048")]
        size: String,
        /// Timed runs; each stage's median is shown.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Weights to load instead of the constant-weight reference network.
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Convert a checkpoint (PyTorch .pth/.pt or safetensors, either layout) to safetensors with
    /// metadata (layout, classes, source).
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// Replace a file already at OUTPUT (by default it is left alone).
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    match run_task(Xtask::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    match task {
        Task::Bench { filter, seconds } => {
            run(bench_command(filter.as_deref(), seconds))?;
            println!("{}", bench_table::render(&criterion_dir())?);
            Ok(())
        }
        Task::Profile {
            size,
            runs,
            weights,
        } => run(profile_command(&size, runs, weights.as_deref())),
        Task::Convert {
            input,
            output,
            force,
        } => {
            let replace = match force {
                true => fastscnn_weights::Replace::Existing,
                false => fastscnn_weights::Replace::Never,
            };
            println!(
                "{}",
                fastscnn_weights::convert(&input, &output, None, replace)?
            );
            Ok(())
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn bench_command(filter: Option<&str>, seconds: Option<u32>) -> Command {
    let mut cmd = cargo();
    cmd.args(["bench", "--package", "fastscnn-benches", "--benches", "--"]);
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    if let Some(seconds) = seconds {
        cmd.args(["--measurement-time", &seconds.to_string()]);
    }
    cmd
}

fn profile_command(size: &str, runs: usize, weights: Option<&Path>) -> Command {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "fastscnn-benches",
        "--bin",
        "profile",
        "--",
        "--size",
        size,
        "--runs",
        &runs.to_string(),
    ]);
    if let Some(weights) = weights {
        cmd.arg("--weights").arg(weights);
    }
    cmd
}

/// Where criterion writes its results: `target/criterion` of this workspace.
fn criterion_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion")
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
    fn profile_runs_the_release_profiler() {
        let cmd = profile_command("512x1024", 5, Some(Path::new("w.pth")));
        let args = args(&cmd);
        assert!(args.starts_with(&["run".to_string(), "--quiet".into(), "--release".into()]));
        assert!(args.ends_with(&[
            "--size".to_string(),
            "512x1024".into(),
            "--runs".into(),
            "5".into(),
            "--weights".into(),
            "w.pth".into()
        ]));
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Xtask::command().debug_assert();
    }
}

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
    /// print the whole-model table of this run (ms and fps at 1024x2048, 512x1024, 256x512),
    /// with the date and the machine.
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
        /// A frame to time, resized to --size, instead of random values (the label map's time
        /// depends on the scene).
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        /// Threads to run on (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Instruction set of the kernels: avx512, avx2, neon or portable.
        #[arg(long)]
        isa: Option<String>,
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
            let started = std::time::SystemTime::now();
            run(bench_command(filter.as_deref(), seconds))?;
            let setup = bench_table::setup(started);
            println!(
                "{}",
                bench_table::render(&criterion_dir(), started, &setup)?
            );
            Ok(())
        }
        Task::Profile {
            size,
            runs,
            weights,
            image,
            threads,
            isa,
        } => run(profile_command(
            &size,
            runs,
            &ProfileInputs {
                weights,
                image,
                threads,
                isa,
            },
        )),
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

/// What `cargo xtask profile` passes on to the profiler besides the size and the runs.
#[derive(Debug, Default)]
struct ProfileInputs {
    weights: Option<PathBuf>,
    image: Option<PathBuf>,
    threads: Option<usize>,
    isa: Option<String>,
}

fn profile_command(size: &str, runs: usize, inputs: &ProfileInputs) -> Command {
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
    if let Some(weights) = &inputs.weights {
        cmd.arg("--weights").arg(weights);
    }
    if let Some(image) = &inputs.image {
        cmd.arg("--image").arg(image);
    }
    if let Some(threads) = inputs.threads {
        cmd.args(["--threads", &threads.to_string()]);
    }
    if let Some(isa) = &inputs.isa {
        cmd.args(["--isa", isa]);
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
        let inputs = ProfileInputs {
            weights: Some("w.pth".into()),
            image: Some("frame.png".into()),
            threads: Some(2),
            isa: Some("avx2".into()),
        };
        let cmd = profile_command("512x1024", 5, &inputs);
        let args = args(&cmd);
        assert!(args.starts_with(&["run".to_string(), "--quiet".into(), "--release".into()]));
        assert!(args.ends_with(&[
            "--size".to_string(),
            "512x1024".into(),
            "--runs".into(),
            "5".into(),
            "--weights".into(),
            "w.pth".into(),
            "--image".into(),
            "frame.png".into(),
            "--threads".into(),
            "2".into(),
            "--isa".into(),
            "avx2".into()
        ]));
        let bare: Vec<String> = profile_command("64x64", 1, &ProfileInputs::default())
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            bare.ends_with(&["--runs".to_string(), "1".into()]),
            "{bare:?}"
        );
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Xtask::command().debug_assert();
    }
}

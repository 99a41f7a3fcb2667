//! `fastscnn`: a thin command line over the fastscnn library crates.

mod bench;
mod cli;
mod device;
mod download;
mod eval;
mod file_roles;
mod info;
mod inputs;
mod interrupt;
mod precision;
mod prepare;
mod progress;
mod segment;
mod train;
mod video;
mod weights;

use std::process::ExitCode;
use std::sync::Mutex;

use clap::Parser;
use fastscnn_cpu::{ContextError, ExecutionContext, Isa};
use fastscnn_model::candle_message;

use cli::{Cli, Command, ExecutionArgs};

/// Makes candle's own threads follow --threads as the rest do: `RAYON_NUM_THREADS` sizes its
/// matrix products and `CANDLE_NUM_THREADS` the pool of its element-wise ops. For training
/// (`train`, `bench --mode train`) that pool's threads also stop spinning after each op while they
/// wait for the next: they park at once, leaving the cores to this project's kernels on rayon's
/// threads, which run between candle's ops (a training step at 512x1024 takes 8% less time,
/// `fastscnn bench --mode train` with and without `CANDLE_BARRIER_POOL_SPIN_LIMIT=0`). A value
/// the user set is kept. Called before any thread starts and before candle's first op reads them.
fn configure_candle_threads(threads: Option<usize>, training: bool) {
    let mut settings = Vec::new();
    if let Some(threads) = threads {
        settings.push(("RAYON_NUM_THREADS", threads.to_string()));
        settings.push(("CANDLE_NUM_THREADS", threads.to_string()));
    }
    if training {
        settings.push(("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0".to_string()));
    }
    for (name, value) in settings {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
}

fn main() -> ExitCode {
    report_bugs_not_user_errors_with_backtraces();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Segment(_) | Command::Eval(_) | Command::Train(_)
    ) {
        // Frame after frame, and step after step, outputs and gradients reuse the memory of the
        // previous one's instead of fresh pages the kernel must zero first (`fastscnn bench
        // --fresh-outputs` times the other way: a training step at 512x1024 takes 14% longer,
        // `benches/train_compare.py`). `bench` decides for itself.
        fastscnn_cpu::keep_freed_memory();
    }
    // --threads sizes rayon's global pool, where this project's ops run under candle
    // (training, the candle path), and the execution context where the fused CPU path runs its
    // frames with the --isa kernels. Commands stay on this thread: a frame's output is allocated
    // here, in the main arena, whose freed blocks glibc keeps for the next frame
    // (`keep_freed_memory`); a pool thread's arena would map fresh pages for every large output.
    let ExecutionArgs { threads, .. } = cli.command.execution();
    let training = match &cli.command {
        Command::Train(_) => true,
        Command::Bench(args) => args.mode == cli::BenchMode::Train,
        _ => false,
    };
    configure_candle_threads(threads, training);
    if let Some(threads) = threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
        {
            eprintln!("error: cannot start the threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match cli.command {
        Command::Segment(args) => {
            execution_context(args.execution).and_then(|c| segment::run(&args, &c))
        }
        Command::Eval(args) => execution_context(args.execution).and_then(|c| eval::run(&args, &c)),
        Command::Info(args) => info::run(&args),
        Command::Download(args) => download::run(&args),
        Command::Prepare(args) => prepare::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Bench(args) => {
            execution_context(args.execution).and_then(|c| bench::run(&args, &c))
        }
    }));
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            // One line: the whole context chain, outermost first.
            eprintln!("error: {}", one_line(&error));
            // A worker thread's panic comes back as an error of its own ("a worker stopped");
            // what it said is a bug to report.
            if let Some(panic) = last_panic() {
                eprintln!("error: internal error in fastscnn (please report it): {panic}");
                return ExitCode::from(101);
            }
            ExitCode::FAILURE
        }
        Err(_) => {
            let panic = last_panic().unwrap_or_default();
            eprintln!("error: internal error in fastscnn (please report it): {panic}");
            ExitCode::from(101)
        }
    }
}

fn last_panic() -> Option<String> {
    LAST_PANIC.lock().ok().and_then(|mut p| p.take())
}

/// The message (and backtrace, when asked for) of the latest panic, which `main` prints when the
/// panic reaches it: one report, after the progress bars are gone.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// The execution context of `--threads` and `--isa`.
fn execution_context(args: ExecutionArgs) -> anyhow::Result<ExecutionContext> {
    let isa = args.isa.unwrap_or_else(Isa::detected);
    ExecutionContext::new(isa, args.threads).map_err(|e| match e {
        ContextError::Unsupported { .. } => anyhow::anyhow!("--isa {}: {e}", isa.name()),
        e => e.into(),
    })
}

/// The error and its causes, outermost first, on one line. The library crates' errors end the
/// chain (their messages carry their causes); the command line's own contexts and foreign errors
/// are followed by theirs. candle's errors print the backtrace they captured (when
/// `RUST_BACKTRACE` is set) and their context on lines of their own: of every message, its first
/// line, and of candle's, [`candle_message`].
fn one_line(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(|cause| match cause.downcast_ref::<candle_core::Error>() {
            Some(candle) => candle_message(candle),
            None => first_line(&cause.to_string()).to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// A user error (a bad file, a bad flag) is one line whatever `RUST_BACKTRACE` says
/// ([`one_line`]); a panic is a bug and keeps its backtrace when one was asked for.
fn report_bugs_not_user_errors_with_backtraces() {
    let wanted = ["RUST_BACKTRACE", "RUST_LIB_BACKTRACE"]
        .iter()
        .any(|var| std::env::var(var).is_ok_and(|v| v != "0"));
    std::panic::set_hook(Box::new(move |info| {
        let mut message = info.to_string();
        if wanted {
            message = format!("{message}\n{}", std::backtrace::Backtrace::force_capture());
        }
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(message);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a library error wrapping candle's looks like when it prints candle's text.
    #[derive(Debug)]
    struct Wrapper(candle_core::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "model.safetensors: {}", self.0)
        }
    }

    impl std::error::Error for Wrapper {}

    #[test]
    fn errors_print_on_one_line_without_candle_backtraces() {
        let candle = || candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("shape mismatch".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let direct = anyhow::Error::new(candle()).context("loading");
        assert_eq!(one_line(&direct), "loading: shape mismatch");
        let wrapped = anyhow::Error::new(Wrapper(candle())).context("loading");
        assert_eq!(
            one_line(&wrapped),
            "loading: model.safetensors: shape mismatch"
        );
        let context = candle_core::Error::Msg("bad".into()).context("reading x");
        assert_eq!(one_line(&anyhow::Error::new(context)), "reading x: bad");
    }
}

//! `fastscnn`: a thin command line over the fastscnn library crates.

mod bench;
mod cli;
mod device;
mod eval;
mod file_roles;
mod hub;
mod info;
mod inputs;
mod prepare;
mod progress;
mod segment;
mod train;
mod weights;

use std::process::ExitCode;
use std::sync::Mutex;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    report_bugs_not_user_errors_with_backtraces();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Segment(_) | Command::Eval(_)) {
        // Frame after frame, outputs reuse the memory of the previous frame's instead of fresh
        // pages the kernel must zero first (`fastscnn bench --fresh-outputs` times the other
        // way). `bench` decides for itself; training's memory is left to the allocator's
        // defaults.
        fastscnn_cpu::keep_freed_memory();
    }
    let result = std::panic::catch_unwind(|| match cli.command {
        Command::Segment(args) => segment::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Info(args) => info::run(&args),
        Command::Prepare(args) => prepare::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Bench(args) => bench::run(&args),
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            // One line: the whole context chain, outermost first.
            eprintln!("error: {error:#}");
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

/// A user error (a bad file, a bad flag) is one line whatever `RUST_BACKTRACE` says; a panic is
/// a bug and keeps its backtrace when one was asked for.
///
/// candle and anyhow capture a backtrace into every error when the variable is set, and candle's
/// errors print it with their message. Both read the variable once, at their first capture, so
/// removing it before any work is done keeps backtraces out of user errors; the panic hook
/// captures its own when the user had asked for one.
fn report_bugs_not_user_errors_with_backtraces() {
    let wanted = ["RUST_BACKTRACE", "RUST_LIB_BACKTRACE"]
        .iter()
        .any(|var| std::env::var(var).is_ok_and(|v| v != "0"));
    std::env::remove_var("RUST_BACKTRACE");
    std::env::remove_var("RUST_LIB_BACKTRACE");
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

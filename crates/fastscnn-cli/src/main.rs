//! `fastscnn`: a thin command line over the fastscnn library crates.

mod bench;
mod cli;
mod device;
mod eval;
mod hub;
mod info;
mod inputs;
mod prepare;
mod progress;
mod segment;
mod train;
mod weights;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Segment(_) | Command::Eval(_)) {
        // Frame after frame, outputs reuse the memory of the previous frame's instead of fresh
        // pages the kernel must zero first (6 ms of logits at 768x1536). `bench` decides for
        // itself; training's memory is left to the allocator's defaults.
        fastscnn_core::cpu::keep_freed_memory();
    }
    let result = match cli.command {
        Command::Segment(args) => segment::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Info(args) => info::run(&args),
        Command::Prepare(args) => prepare::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the whole context chain, outermost first.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

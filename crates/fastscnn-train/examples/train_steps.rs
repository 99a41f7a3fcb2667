//! Trains Fast-SCNN for a few steps (20 by default) on a Cityscapes split (`train` by default)
//! with the paper's recipe scaled down to a small machine (batch 2, 256x512 crops), printing the
//! loss. The run folder gets the checkpoint (`last.safetensors`, loadable as weights) and the
//! logs; a run interrupted before its end resumes from its last checkpoint when the same command
//! is run again.
//!
//! ```sh
//! cargo run --release -p fastscnn-train --example train_steps -- ROOT RUN_DIR [STEPS [SPLIT]]
//! ```

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use fastscnn_model::Device;
use fastscnn_train::{Event, Runtime, TrainConfig, Trainer};

/// Errors end the program with their one-line message, not their `Debug` form.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (root, run_dir, steps, split) = match args.as_slice() {
        [root, run_dir] => (root, run_dir, 20, "train"),
        [root, run_dir, steps] => (root, run_dir, steps.parse()?, "train"),
        [root, run_dir, steps, split] => (root, run_dir, steps.parse()?, split.as_str()),
        _ => return Err("usage: train_steps ROOT RUN_DIR [STEPS [SPLIT]]".into()),
    };
    let runtime = Runtime {
        dataset_root: PathBuf::from(root),
        run_dir: PathBuf::from(run_dir),
        device: Device::Cpu,
        workers: 2,
        max_batch_pixels: 1 << 26,
    };
    let mut trainer = if runtime.run_dir.join("last.safetensors").exists() {
        Trainer::resume(runtime)?
    } else {
        let config = TrainConfig {
            train_split: split.into(),
            batch_size: 2,
            crop: (256, 512),
            val_split: None,
            log_every: 5,
            val_every: steps,
            ..TrainConfig::paper(steps)
        };
        Trainer::start(config, runtime)?
    };
    trainer.run(None, &mut |event| match event {
        Event::Step(report) => println!(
            "step {:>4}/{}: loss {:.4}, lr {:.5}, {:.2} images/s",
            report.step, report.total, report.loss, report.lr, report.images_per_s
        ),
        Event::Checkpoint { step, path } => println!("step {step}: saved {}", path.display()),
        Event::Validation { .. } => {}
    })?;
    Ok(())
}

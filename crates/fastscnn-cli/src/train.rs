//! `fastscnn train`: the paper's recipe on Cityscapes or a folder dataset of any classes, with a
//! progress bar, logs in the run folder and checkpoints that `segment` and `eval` load directly.

use anyhow::{bail, Context, Result};
use fastscnn_data::{Dataset, DiscoverOptions};
use fastscnn_train::{Augment, Event, Runtime, TrainConfig, Trainer};

use crate::cli::TrainArgs;
use crate::file_roles::FileRoles;
use crate::{device, progress};

pub fn run(args: &TrainArgs) -> Result<()> {
    let runtime = Runtime {
        dataset_root: args.dataset_root.clone(),
        run_dir: args.out.clone(),
        device: device::select(args.device)?,
        workers: args.workers,
        max_batch_pixels: args.max_batch_pixels,
    };
    if args.stop_at == Some(0) {
        bail!("--stop-at 0: must be after the iterations done");
    }
    let mut trainer = if args.resume {
        // The library refuses a saved recipe over the budget of --max-batch-pixels.
        let trainer = Trainer::resume(runtime)?;
        check_stop_at(args.stop_at, trainer.step(), trainer.config().iters)?;
        eprintln!(
            "resuming {} at iteration {} of {} with its saved configuration",
            args.out.display(),
            trainer.step(),
            trainer.config().iters
        );
        trainer
    } else {
        let trainer = Trainer::start(config(args)?, runtime)?;
        if let (Some(init), false) = (&args.init, trainer.reinitialised().is_empty()) {
            eprintln!(
                "{}: other classes than the dataset's {}; re-initialised {}",
                init.display(),
                trainer.model().model.num_classes(),
                trainer.reinitialised().join(", ")
            );
        }
        trainer
    };

    let total = trainer.config().iters;
    check_stop_at(args.stop_at, trainer.step(), total)?;
    let bar = progress::bar(total as usize, "iterations");
    bar.set_position(trainer.step());
    bar.set_message("train");
    trainer.run(args.stop_at, &mut |event| match event {
        Event::Step(report) => {
            bar.set_position(report.step);
            bar.set_message(format!(
                "loss {:.4} lr {:.5} {:.1} img/s",
                report.loss, report.lr, report.images_per_s
            ));
        }
        Event::Validation { step, evaluation } => bar.suspend(|| {
            println!(
                "iteration {step}: val mIoU {:.2}%, pixel accuracy {:.2}%",
                100.0 * evaluation.mean_iou(),
                100.0 * evaluation.pixel_accuracy()
            )
        }),
        Event::Checkpoint { step, path } => {
            bar.suspend(|| println!("iteration {step}: saved {}", path.display()))
        }
    })?;
    bar.finish_and_clear();
    println!(
        "{} iterations done; weights in {}",
        trainer.step(),
        args.out.join(fastscnn_train::checkpoint::LAST).display()
    );
    Ok(())
}

fn check_stop_at(stop_at: Option<u64>, done: u64, total: u64) -> Result<()> {
    match stop_at {
        Some(stop_at) if stop_at <= done || stop_at > total => bail!(
            "--stop-at {stop_at}: must be after the {done} iterations done and at most the run's \
             {total}"
        ),
        _ => Ok(()),
    }
}

/// Batch size x crop within the budget of `--max-batch-pixels`.
fn check_batch_pixels(batch_size: usize, crop: (usize, usize), max: u64) -> Result<()> {
    let batch_pixels = (batch_size as u64)
        .saturating_mul(crop.0 as u64)
        .saturating_mul(crop.1 as u64);
    if batch_pixels > max {
        bail!(
            "--batch-size {batch_size} with --crop {}x{}: {} a batch, over the budget of {} \
             (--max-batch-pixels {max})",
            crop.0,
            crop.1,
            fastscnn_data::format_pixels(batch_pixels),
            fastscnn_data::format_pixels(max),
        );
    }
    Ok(())
}

/// The run configuration from the flags: the paper's recipe with the user's overrides.
fn config(args: &TrainArgs) -> Result<TrainConfig> {
    let paper = TrainConfig::paper(1);
    let batch_size = args.batch_size.unwrap_or(paper.batch_size);
    let iters = match (args.iters, args.epochs) {
        (Some(iters), _) => iters,
        (None, Some(epochs)) => {
            let dataset = Dataset::open(&args.dataset_root, args.dataset_format)?;
            let train = dataset.discover(&args.train_split, DiscoverOptions::default())?;
            // Training drops the last partial batch of every epoch (a split smaller than one batch
            // is repeated to fill one).
            let per_epoch = (train.samples.len() / batch_size.max(1)).max(1) as u64;
            epochs.checked_mul(per_epoch).with_context(|| {
                format!("--epochs {epochs}: more iterations than can be counted")
            })?
        }
        (None, None) => bail!("give the length of the run: --iters N or --epochs E"),
    };
    if let Some(init) = &args.init {
        let mut roles = FileRoles::default();
        roles.input(init, "--init");
        for name in [
            fastscnn_train::checkpoint::LAST,
            fastscnn_train::checkpoint::BEST,
            "train.log",
            "metrics.jsonl",
        ] {
            roles.output(&args.out.join(name), format!("the run's {name}"))?;
        }
    }
    let crop = args.crop.unwrap_or(paper.crop);
    check_batch_pixels(batch_size, crop, args.max_batch_pixels)?;
    Ok(TrainConfig {
        layout: args.layout.clone(),
        train_split: args.train_split.clone(),
        val_split: (!args.no_val).then(|| args.val_split.clone()),
        iters,
        batch_size,
        crop,
        scale_range: args.scale_range.unwrap_or(match args.augment {
            Augment::Paper => paper.scale_range,
            Augment::CropOnly => (1.0, 1.0),
        }),
        augment: args.augment,
        dropout: args.dropout,
        lr: args.lr.unwrap_or(paper.lr),
        warmup_iters: args.warmup_iters,
        ohem: args.ohem.then_some((0.7, 100_000)),
        seed: args.seed,
        val_every: args.val_every.unwrap_or(paper.val_every),
        log_every: args.log_every,
        init: args.init.clone(),
        dataset_format: args.dataset_format.map(|f| f.name().to_string()),
        ..paper
    })
}

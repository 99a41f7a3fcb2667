//! The training loop: the paper's recipe over the data crate's batches, validation with the
//! evaluation shared by `fastscnn eval`, checkpoints that resume bit for bit.
//!
//! Every random draw is a function of the seed and the step (batch order and augmentation per
//! (seed, epoch, sample), dropout per (seed, step)), and the state saved at a checkpoint is the
//! weights, the BatchNorm statistics and the momentum buffers, so stopping and resuming changes
//! nothing.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use fastscnn_data::{Batches, Dataset, DiscoverOptions, Loader, LoaderConfig, IGNORE_TRAIN_ID};
use fastscnn_model::{FastScnnConfig, WeightFile};
use serde::Serialize;

use crate::checkpoint::{self, CheckpointWeights, BEST, LAST};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::evaluation::{evaluate, Evaluation};
use crate::loss::{Ohem, SegmentationLoss};
use crate::optimizer::Sgd;
use crate::run_dir::RunDir;
use crate::schedule::PolyLr;
use crate::step::TrainStep;
use crate::trainable::TrainableModel;

/// Where and how a run executes; may differ between a run and its resumption.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The Cityscapes root, holding `leftImg8bit/` and `gtFine/`.
    pub dataset_root: PathBuf,
    /// The run folder: checkpoints and logs (`train.log`, `metrics.jsonl`).
    pub run_dir: PathBuf,
    /// The device the model trains and validates on.
    pub device: Device,
    /// Threads loading batches (decoding and augmenting); 0 loads on the training thread.
    pub workers: usize,
    /// The most pixels one batch (batch size x crop) may hold: a recipe over it, new or saved
    /// in a checkpoint, is refused before its batches are allocated.
    pub max_batch_pixels: u64,
}

/// One logged training step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Iterations done (1-based: the first step reports 1).
    pub step: u64,
    /// The run's total iterations.
    pub total: u64,
    /// This step's loss: the main loss plus the weighted auxiliary losses.
    pub loss: f64,
    /// The learning rate this step used.
    pub lr: f64,
    /// Training throughput since the previous report, in images per second.
    pub images_per_s: f64,
}

/// What the loop tells its caller about.
pub enum Event<'a> {
    /// A step was logged: every `log_every` iterations and at the last step `run` takes.
    Step(&'a StepReport),
    /// A validation pass finished.
    Validation {
        /// Iterations done when it ran.
        step: u64,
        /// What it measured.
        evaluation: &'a Evaluation,
    },
    /// `last.safetensors` was written.
    Checkpoint {
        /// Iterations done at the checkpoint.
        step: u64,
        /// The file written.
        path: &'a Path,
    },
}

/// One training run: the model, optimiser, data and schedule of a recipe, and its run folder,
/// locked for as long as the value lives.
pub struct Trainer {
    config: TrainConfig,
    runtime: Runtime,
    run_dir: RunDir,
    model: TrainableModel,
    optimizer: Sgd,
    loader: Loader,
    val_loader: Option<Loader>,
    train_step: TrainStep,
    schedule: PolyLr,
    step: u64,
    best_miou: Option<f64>,
    last_checkpoint: u64,
    reinitialised: Vec<String>,
}

impl Trainer {
    /// A new run in `runtime.run_dir` (created; refused if it already holds a checkpoint).
    pub fn start(config: TrainConfig, runtime: Runtime) -> Result<Self> {
        config.validate(runtime.max_batch_pixels)?;
        // Everything that can be refused is, before the folder is created.
        let init = match &config.init {
            Some(path) => {
                let weights = WeightFile::open(path)?;
                weights.check_values()?;
                Some(weights)
            }
            None => None,
        };
        let run_dir = RunDir::claim(&runtime.run_dir)?;
        if runtime.run_dir.join(LAST).exists() {
            return Err(TrainError::Checkpoint {
                path: runtime.run_dir.clone(),
                why: "already holds a run; pass --resume to continue it or choose another --out"
                    .into(),
            });
        }
        // Lines of an earlier start that never reached a checkpoint.
        run_dir.trim_logs(0)?;
        let mut trainer = Self::build(config, runtime, run_dir)?;
        if let Some(weights) = init {
            trainer.reinitialised = trainer.model.load_for_fine_tuning(&weights)?;
        }
        Ok(trainer)
    }

    /// Continues the run in `runtime.run_dir` from its last checkpoint, with its saved
    /// configuration.
    pub fn resume(runtime: Runtime) -> Result<Self> {
        if !runtime.run_dir.join(LAST).is_file() {
            return Err(TrainError::Checkpoint {
                path: runtime.run_dir.clone(),
                why: format!("no checkpoint to resume from (no {LAST})"),
            });
        }
        let run_dir = RunDir::claim(&runtime.run_dir)?;
        let saved = checkpoint::load_last(&runtime.run_dir, &runtime.device)?;
        saved
            .config
            .validate(runtime.max_batch_pixels)
            .map_err(|e| TrainError::Checkpoint {
                path: runtime.run_dir.join(LAST),
                why: format!("its saved recipe: {e}"),
            })?;
        run_dir.trim_logs(saved.step)?;
        let mut trainer = Self::build(saved.config, runtime, run_dir)?;
        // Colours and the masks' ignore value may change between runs; the classes may not.
        let saved_classes = saved.weights.class_table()?;
        if saved_classes.names() != trainer.model.model.classes().names() {
            return Err(TrainError::Checkpoint {
                path: trainer.runtime.run_dir.join(LAST),
                why: format!(
                    "the run trained on the classes {:?}, but the dataset at {} has {:?}",
                    saved_classes.names(),
                    trainer.runtime.dataset_root.display(),
                    trainer.model.model.classes().names()
                ),
            });
        }
        trainer.model.load(&saved.weights, false)?;
        trainer
            .optimizer
            .load_buffers(saved.buffers)
            .map_err(|e| TrainError::Checkpoint {
                path: trainer.runtime.run_dir.join(LAST),
                why: e.to_string(),
            })?;
        trainer.step = saved.step;
        trainer.last_checkpoint = saved.step;
        trainer.best_miou = saved.best_miou;
        Ok(trainer)
    }

    fn build(config: TrainConfig, runtime: Runtime, run_dir: RunDir) -> Result<Self> {
        let layout = config.validate(runtime.max_batch_pixels)?;
        let dataset = Dataset::open(&runtime.dataset_root, config.dataset_format()?)?;
        // Training uses every auxiliary head of the preset, for the dataset's classes.
        let model_config: FastScnnConfig = layout.config(dataset.classes().len());
        let mut model = TrainableModel::new(&model_config, &runtime.device, config.seed)?;
        model.model = model
            .model
            .clone()
            .with_classes(dataset.classes().clone())?;
        let optimizer = Sgd::new(model.params(), config.momentum, config.weight_decay);

        let train = dataset.discover(&config.train_split, DiscoverOptions::default())?;
        let loader = Loader::new(
            fill_one_batch(train.samples, config.batch_size),
            LoaderConfig {
                workers: runtime.workers,
                normalization: model_config.normalization,
                ..LoaderConfig::training(config.batch_size, config.augmentation(), config.seed)
            },
        )?;
        let val_loader = match &config.val_split {
            Some(split) => {
                let val = dataset.discover(split, DiscoverOptions::default())?;
                Some(Loader::new(
                    val.samples,
                    LoaderConfig {
                        workers: runtime.workers,
                        normalization: model_config.normalization,
                        ..LoaderConfig::evaluation(1, 1.0)
                    },
                )?)
            }
            None => None,
        };
        let train_step = TrainStep {
            loss: SegmentationLoss {
                ignore: IGNORE_TRAIN_ID as u32,
                aux_weight: config.aux_weight,
                ohem: config.ohem.map(|(threshold, min_kept)| Ohem {
                    threshold,
                    min_kept,
                }),
            },
            dropout: config.dropout,
        };
        let schedule = PolyLr {
            base: config.lr,
            power: config.power,
            total_iters: config.iters,
            warmup_iters: config.warmup_iters,
            warmup_ratio: 0.1,
        };
        Ok(Self {
            config,
            runtime,
            run_dir,
            model,
            optimizer,
            loader,
            val_loader,
            train_step,
            schedule,
            step: 0,
            best_miou: None,
            last_checkpoint: 0,
            reinitialised: Vec::new(),
        })
    }

    /// The run's recipe; for a resumed run, the one saved in its checkpoint.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Iterations done so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The tensors of the `init` weights left re-initialised, in their file's key names: the
    /// classifying layers when the weights classify another number of classes than the
    /// dataset's. Empty otherwise, and for a resumed run.
    pub fn reinitialised(&self) -> &[String] {
        &self.reinitialised
    }

    /// The model being trained.
    pub fn model(&self) -> &TrainableModel {
        &self.model
    }

    /// Trains until the configured total, or until `stop_at` iterations are done (to split a
    /// run), checkpointing at every validation and at the end.
    pub fn run(&mut self, stop_at: Option<u64>, on_event: &mut dyn FnMut(Event)) -> Result<()> {
        let end = stop_at.unwrap_or(self.config.iters).min(self.config.iters);
        let per_epoch = self.loader.batches_per_epoch() as u64;
        let mut epoch = self.step / per_epoch;
        let mut batches: Batches = self
            .loader
            .epoch_from(epoch, (self.step % per_epoch) as usize);
        let mut window = (Instant::now(), 0usize);
        while self.step < end {
            let batch = match batches.next() {
                Some(batch) => batch?,
                None => {
                    epoch += 1;
                    batches = self.loader.epoch(epoch);
                    continue;
                }
            };
            let lr = self.schedule.lr(self.step);
            let images = batch.images.to_device(&self.runtime.device)?;
            let labels = batch
                .train_ids
                .as_ref()
                .ok_or_else(|| TrainError::Config("training samples need labels".into()))?
                .to_device(&self.runtime.device)?;
            let loss_value = self.train_step.run(
                &self.model,
                &mut self.optimizer,
                &images,
                &labels,
                lr,
                dropout_seed(self.config.seed, self.step),
            )?;
            if !loss_value.is_finite() {
                return Err(TrainError::NonFinite {
                    step: self.step + 1,
                    loss: loss_value,
                    last_checkpoint: self.last_checkpoint,
                });
            }
            self.step += 1;
            window.1 += batch.indices.len();

            if self.step.is_multiple_of(self.config.log_every) || self.step == end {
                let seconds = window
                    .0
                    .elapsed()
                    .max(Duration::from_micros(1))
                    .as_secs_f64();
                let report = StepReport {
                    step: self.step,
                    total: self.config.iters,
                    loss: loss_value,
                    lr,
                    images_per_s: window.1 as f64 / seconds,
                };
                self.log(&report)?;
                on_event(Event::Step(&report));
                window = (Instant::now(), 0);
            }
            if self.step.is_multiple_of(self.config.val_every) || self.step == end {
                self.validate_and_checkpoint(on_event)?;
            }
        }
        Ok(())
    }

    fn validate_and_checkpoint(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<()> {
        // Never replace a good checkpoint with weights or statistics that have already blown up.
        for (_, var) in self.model.sorted_vars() {
            let sum = var
                .as_tensor()
                .abs()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            if !sum.is_finite() {
                return Err(TrainError::NonFinite {
                    step: self.step,
                    loss: sum,
                    last_checkpoint: self.last_checkpoint,
                });
            }
        }
        let run_dir = self.run_dir.path().to_path_buf();

        let mut miou = None;
        if let Some(val) = &self.val_loader {
            let model = &self.model.model;
            let evaluation =
                match evaluate(model, val, model.classes(), &self.runtime.device, || {}) {
                    Ok(evaluation) => evaluation,
                    Err(error) => {
                        // A validation frame that cannot be read must not cost the training done.
                        self.save_last(None)?;
                        return Err(TrainError::Validation {
                            step: self.step,
                            cause: error,
                        });
                    }
                };
            let value = evaluation.mean_iou();
            self.log_validation(&evaluation)?;
            on_event(Event::Validation {
                step: self.step,
                evaluation: &evaluation,
            });
            if !value.is_nan() && self.best_miou.is_none_or(|best| value > best) {
                self.best_miou = Some(value);
                checkpoint::save_weights(&run_dir, BEST, self.checkpoint_weights(Some(value))?)?;
            }
            miou = Some(value);
        }
        let path = self.save_last(miou)?;
        on_event(Event::Checkpoint {
            step: self.step,
            path: &path,
        });
        Ok(())
    }

    fn save_last(&mut self, miou: Option<f64>) -> Result<std::path::PathBuf> {
        let path = checkpoint::save_last(
            self.run_dir.path(),
            self.checkpoint_weights(miou)?,
            &self.config,
            self.best_miou,
            self.optimizer.buffers(),
        )?;
        self.last_checkpoint = self.step;
        Ok(path)
    }

    fn checkpoint_weights(&self, miou: Option<f64>) -> Result<CheckpointWeights<'_>> {
        Ok(CheckpointWeights {
            tensors: self.model.layout_tensors()?,
            layout: self.model.model.config().layout.name(),
            classes: self.model.model.classes(),
            step: self.step,
            miou,
        })
    }

    fn append(&self, file: &str, line: &str) -> Result<()> {
        let path = self.runtime.run_dir.join(file);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"))
            .map_err(|cause| TrainError::Write { path, cause })
    }

    fn log(&self, report: &StepReport) -> Result<()> {
        self.append(
            "train.log",
            &format!(
                "step {}/{} loss {:.4} lr {:.6} {:.2} images/s",
                report.step, report.total, report.loss, report.lr, report.images_per_s
            ),
        )?;
        let json = serde_json::json!({ "kind": "train", "step": report.step, "loss": report.loss,
            "lr": report.lr, "images_per_s": report.images_per_s });
        self.append("metrics.jsonl", &json.to_string())
    }

    fn log_validation(&self, e: &Evaluation) -> Result<()> {
        let per_class: serde_json::Map<String, serde_json::Value> = e
            .named_class_iou()
            .into_iter()
            .map(|(name, v)| (name.to_string(), finite_or_null(v)))
            .collect();
        self.append(
            "train.log",
            &format!(
                "step {} validation: mIoU {:.4}, pixel accuracy {:.4} over {} images",
                self.step,
                e.mean_iou(),
                e.pixel_accuracy(),
                e.images
            ),
        )?;
        let json = serde_json::json!({ "kind": "validation", "step": self.step,
            "miou": finite_or_null(e.mean_iou()), "pixel_accuracy": finite_or_null(e.pixel_accuracy()),
            "per_class_iou": per_class, "images": e.images });
        self.append("metrics.jsonl", &json.to_string())
    }
}

/// A split smaller than one batch is repeated until it fills one, so tiny datasets (a few frames
/// to overfit, a smoke test) train instead of yielding no batch at all; each copy still gets its
/// own augmentation.
fn fill_one_batch<T: Clone>(samples: Vec<T>, batch_size: usize) -> Vec<T> {
    if samples.is_empty() || samples.len() >= batch_size {
        return samples;
    }
    samples.iter().cycle().take(batch_size).cloned().collect()
}

fn finite_or_null(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!(v)
    } else {
        serde_json::Value::Null
    }
}

/// The dropout masks of step `step`: a fixed function of the run seed and the step.
fn dropout_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_splits_fill_one_batch() {
        assert_eq!(fill_one_batch(vec![1], 3), [1, 1, 1]);
        assert_eq!(fill_one_batch(vec![1, 2], 3), [1, 2, 1]);
        assert_eq!(fill_one_batch(vec![1, 2, 3, 4], 3), [1, 2, 3, 4]);
    }

    #[test]
    fn dropout_seeds_differ_by_step_and_seed() {
        assert_ne!(dropout_seed(0, 1), dropout_seed(0, 2));
        assert_ne!(dropout_seed(1, 1), dropout_seed(0, 1));
        assert_eq!(dropout_seed(3, 4), dropout_seed(3, 4));
    }
}

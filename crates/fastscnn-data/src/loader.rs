//! Batches of normalised images and train ids, produced on worker threads ahead of the consumer.
//!
//! Worker `w` of `W` builds batches `w, w + W, w + 2W, …` of an epoch and hands each over through
//! its own bounded queue; the consumer takes batch `b` from worker `b % W`. Batches therefore
//! arrive in order without a reorder buffer, at most `prefetch` per worker wait in memory, and —
//! as every sample's randomness is keyed by (seed, epoch, index) — the bytes do not depend on the
//! worker count.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use fastscnn_core::Normalization;

use crate::augment::AugmentConfig;
use crate::dataset::Sample;
use crate::error::{DataError, Result};
use crate::resample::resize_image;
use crate::rng::{epoch_order, sample_rng};

/// How batches are made.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch; at least 1.
    pub batch_size: usize,
    /// A new order every epoch, fixed by (seed, epoch).
    pub shuffle: bool,
    /// Leave out the last batch when it would be smaller than `batch_size`.
    pub drop_last: bool,
    /// Threads decoding and augmenting; 0 loads on the consumer's thread.
    pub workers: usize,
    /// Finished batches each worker may hold before it waits for the consumer.
    pub prefetch: usize,
    /// Seed of the shuffle and of every sample's augmentation.
    pub seed: u64,
    /// Training augmentation; `None` for evaluation.
    pub augment: Option<AugmentConfig>,
    /// Evaluation only: the image is resized by this factor (1, 0.5, 0.25); labels keep their
    /// full resolution, where predictions are scored.
    pub input_scale: f32,
    /// Per-channel mean and standard deviation the images are normalised with.
    pub normalization: Normalization,
}

impl LoaderConfig {
    /// Shuffled, augmented batches that drop the last partial one.
    pub fn training(batch_size: usize, augment: AugmentConfig, seed: u64) -> Self {
        Self {
            batch_size,
            shuffle: true,
            drop_last: true,
            workers: 2,
            prefetch: 2,
            seed,
            augment: Some(augment),
            input_scale: 1.0,
            normalization: Normalization::IMAGENET,
        }
    }

    /// Every sample once, in dataset order, unaugmented.
    pub fn evaluation(batch_size: usize, input_scale: f32) -> Self {
        Self {
            batch_size,
            shuffle: false,
            drop_last: false,
            workers: 2,
            prefetch: 2,
            seed: 0,
            augment: None,
            input_scale,
            normalization: Normalization::IMAGENET,
        }
    }

    fn validate(&self) -> Result<()> {
        let invalid = |why: String| {
            Err(DataError::InvalidConfig {
                what: "loader",
                why,
            })
        };
        if self.batch_size == 0 {
            return invalid("batch size must be at least 1".into());
        }
        if self.prefetch == 0 {
            return invalid("prefetch must be at least 1".into());
        }
        if !(self.input_scale > 0.0 && self.input_scale <= 1.0) {
            return invalid(format!(
                "input scale {} must be in (0, 1]",
                self.input_scale
            ));
        }
        if let Some(augment) = &self.augment {
            augment.validate()?;
        }
        Ok(())
    }
}

/// One batch on the CPU.
#[derive(Debug)]
pub struct Batch {
    /// f32 `(B, 3, H, W)`, normalised.
    pub images: Tensor,
    /// u8 `(B, H, W)` train ids (255 = ignore), when the samples have labels.
    pub train_ids: Option<Tensor>,
    /// Index of each sample in the loader's sample list.
    pub indices: Vec<usize>,
}

/// Turns a sample list into epochs of batches.
#[derive(Debug, Clone)]
pub struct Loader {
    samples: Arc<[Sample]>,
    config: Arc<LoaderConfig>,
}

impl Loader {
    /// A loader over `samples`; fails when the configuration is invalid or there are no samples.
    pub fn new(samples: Vec<Sample>, config: LoaderConfig) -> Result<Self> {
        config.validate()?;
        if samples.is_empty() {
            return Err(DataError::InvalidConfig {
                what: "loader",
                why: "no samples".into(),
            });
        }
        Ok(Self {
            samples: samples.into(),
            config: Arc::new(config),
        })
    }

    /// The samples, in the order batch indices refer to.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The configuration the loader was made with.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Batches in every epoch, counting a last partial batch unless `drop_last` is set.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.samples.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The sample indices of each batch of `epoch`.
    pub fn epoch_batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let order = epoch_order(
            self.samples.len(),
            self.config.seed,
            epoch,
            self.config.shuffle,
        );
        order
            .chunks(self.config.batch_size)
            .take(self.batches_per_epoch())
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// The batches of `epoch`, loaded ahead on the worker threads.
    pub fn epoch(&self, epoch: u64) -> Batches {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first` on, as a resumed run needs them: the skipped
    /// batches are never loaded, and the rest are the bytes an uninterrupted epoch would give.
    pub fn epoch_from(&self, epoch: u64, first: usize) -> Batches {
        let plan: Arc<[Vec<usize>]> = self
            .epoch_batches(epoch)
            .into_iter()
            .skip(first)
            .collect::<Vec<_>>()
            .into();
        let workers = self.config.workers.min(plan.len());
        let mut queues = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(self.config.prefetch);
            let loader = self.clone();
            let plan = Arc::clone(&plan);
            handles.push(std::thread::spawn(move || {
                for indices in plan.iter().skip(w).step_by(workers) {
                    let batch = loader.load_batch(epoch, indices);
                    let failed = batch.is_err();
                    // A closed queue means the consumer is gone: stop quietly.
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            }));
            queues.push(rx);
        }
        Batches {
            loader: self.clone(),
            epoch,
            plan,
            next: 0,
            queues,
            handles,
            failed: false,
        }
    }

    /// Loads, augments and stacks the samples `indices` of `epoch`, on the calling thread.
    pub fn load_batch(&self, epoch: u64, indices: &[usize]) -> Result<Batch> {
        let config = &self.config;
        let mut images = Vec::with_capacity(indices.len());
        let mut labels = Vec::with_capacity(indices.len());
        for &index in indices {
            let loaded = self.samples[index].load()?;
            let (image, train_ids) = match &config.augment {
                Some(augment) => {
                    let mut rng = sample_rng(config.seed, epoch, index);
                    augment.apply(&loaded.image, loaded.train_ids.as_ref(), &mut rng)
                }
                None => (
                    resize_image(&loaded.image, config.input_scale),
                    loaded.train_ids,
                ),
            };
            images.push(image);
            labels.extend(train_ids);
        }

        let b = indices.len();
        let (w, h) = self.common_size(indices, images.iter().map(|i| i.dimensions()))?;
        let plane = w as usize * h as usize;
        let mut data = vec![0f32; b * 3 * plane];
        for (image, out) in images.iter().zip(data.chunks_exact_mut(3 * plane)) {
            config.normalization.rgb_to_planar(image.as_raw(), out);
        }
        let images = Tensor::from_vec(data, (b, 3, h as usize, w as usize), &Device::Cpu)?;

        // At reduced evaluation scales labels keep their full resolution, so they are checked
        // on their own.
        let train_ids = if labels.len() == b {
            let (w, h) = self.common_size(indices, labels.iter().map(|l| l.dimensions()))?;
            let data: Vec<u8> = labels.iter().flat_map(|l| l.as_raw()).copied().collect();
            Some(Tensor::from_vec(
                data,
                (b, h as usize, w as usize),
                &Device::Cpu,
            )?)
        } else {
            None
        };
        Ok(Batch {
            images,
            train_ids,
            indices: indices.to_vec(),
        })
    }

    /// The one `(width, height)` all of a batch's images share, or an error naming two that differ.
    fn common_size(
        &self,
        indices: &[usize],
        sizes: impl Iterator<Item = (u32, u32)>,
    ) -> Result<(u32, u32)> {
        let sizes: Vec<_> = sizes.collect();
        let describe = |i: usize| {
            let (w, h) = sizes[i];
            format!("{} ({w}x{h})", self.samples[indices[i]].image.display())
        };
        match sizes.iter().position(|s| *s != sizes[0]) {
            None => Ok(sizes[0]),
            Some(odd) => Err(DataError::UnequalBatch {
                first: describe(0),
                other: describe(odd),
            }),
        }
    }
}

/// The batches of one epoch, in order. After an error it yields nothing more.
pub struct Batches {
    loader: Loader,
    epoch: u64,
    plan: Arc<[Vec<usize>]>,
    next: usize,
    queues: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    failed: bool,
}

impl Iterator for Batches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.plan.len() {
            return None;
        }
        let batch = if self.queues.is_empty() {
            self.loader.load_batch(self.epoch, &self.plan[self.next])
        } else {
            let queue = &self.queues[self.next % self.queues.len()];
            // A worker only hangs up early after sending its error, or if it panicked.
            queue.recv().unwrap_or_else(|_| {
                Err(DataError::InvalidConfig {
                    what: "loader",
                    why: "a worker thread stopped unexpectedly".into(),
                })
            })
        };
        self.next += 1;
        self.failed = batch.is_err();
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.failed {
            0
        } else {
            self.plan.len() - self.next
        };
        (left, Some(left))
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // Closing the queues makes every worker's next send fail, so each stops after at most
        // the batch it is building.
        self.queues.clear();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

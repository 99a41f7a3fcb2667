//! Scoring a model on a labelled split: the one implementation behind `fastscnn eval` and the
//! validation runs of training.
//!
//! Predictions are scored at the label's full resolution, as the Cityscapes benchmark does: when
//! the input was scaled down, the logits are resized back to the label size before the argmax
//! ([`FastScnn::predict_at`]).

use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use fastscnn_data::labels::{train_class_names, train_id_categories, CATEGORY_NAMES};
use fastscnn_data::{Loader, IGNORE_TRAIN_ID, NUM_TRAIN_CLASSES};
use fastscnn_model::FastScnn;

use crate::metrics::{nan_mean, ConfusionMatrix, MetricsError};

/// Why an evaluation stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("the weights classify {model} classes, but Cityscapes is scored on {dataset}")]
    ClassCount { model: usize, dataset: usize },
    #[error("{image}: has no label to score against")]
    Unlabelled { image: String },
    #[error(transparent)]
    Data(#[from] fastscnn_data::DataError),
    #[error("{image}: {source}")]
    Metrics { image: String, source: MetricsError },
    #[error("{image}: {source}")]
    Network {
        image: String,
        source: candle_core::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// What one pass over a split measured.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Over the 19 train ids, ignore pixels left out.
    pub confusion: ConfusionMatrix,
    pub images: usize,
    /// Time in the model (forward, resize, argmax), not in loading.
    pub model_time: Duration,
}

impl Evaluation {
    pub fn per_class_iou(&self) -> Vec<f64> {
        self.confusion.per_class_iou()
    }

    pub fn mean_iou(&self) -> f64 {
        self.confusion.mean_iou()
    }

    /// IoU of each of the seven categories, from the category-level confusion matrix.
    pub fn per_category_iou(&self) -> Vec<f64> {
        self.confusion
            .grouped(&train_id_categories(), CATEGORY_NAMES.len())
            .per_class_iou()
    }

    pub fn category_mean_iou(&self) -> f64 {
        nan_mean(&self.per_category_iou())
    }

    pub fn pixel_accuracy(&self) -> f64 {
        self.confusion.pixel_accuracy()
    }

    /// Images per second of model time.
    pub fn fps(&self) -> f64 {
        self.images as f64 / self.model_time.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// (class name, IoU) in train-id order.
    pub fn named_class_iou(&self) -> Vec<(&'static str, f64)> {
        train_class_names()
            .into_iter()
            .zip(self.per_class_iou())
            .collect()
    }

    /// (category name, IoU) in category order.
    pub fn named_category_iou(&self) -> Vec<(&'static str, f64)> {
        CATEGORY_NAMES
            .into_iter()
            .zip(self.per_category_iou())
            .collect()
    }
}

/// Runs `model` over every batch of `loader`'s epoch 0 on `device` and accumulates one confusion
/// matrix; `on_image` is called once per scored image (for progress bars).
pub fn evaluate(
    model: &FastScnn,
    loader: &Loader,
    device: &Device,
    mut on_image: impl FnMut(),
) -> Result<Evaluation, EvalError> {
    if model.num_classes() != NUM_TRAIN_CLASSES {
        return Err(EvalError::ClassCount {
            model: model.num_classes(),
            dataset: NUM_TRAIN_CLASSES,
        });
    }
    let mut confusion = ConfusionMatrix::new(NUM_TRAIN_CLASSES, IGNORE_TRAIN_ID as u32);
    let mut images = 0;
    let mut model_time = Duration::ZERO;
    for batch in loader.epoch(0) {
        let batch = batch?;
        let name = |i: usize| {
            loader.samples()[batch.indices[i]]
                .image
                .display()
                .to_string()
        };
        let Some(labels) = &batch.train_ids else {
            return Err(EvalError::Unlabelled { image: name(0) });
        };
        let (b, h, w) = labels.dims3()?;
        let start = Instant::now();
        let predictions = model
            .predict_at(&batch.images.to_device(device)?, h, w)
            .map_err(|source| EvalError::Network {
                image: name(0),
                source,
            })?;
        // Reading the result back waits for an asynchronous device to finish.
        let predictions: Vec<u8> = predictions.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?;
        model_time += start.elapsed();
        let labels: Vec<u8> = labels.flatten_all()?.to_vec1()?;
        let plane = h * w;
        for i in 0..b {
            let range = i * plane..(i + 1) * plane;
            confusion
                .update(&predictions[range.clone()], &labels[range])
                .map_err(|source| EvalError::Metrics {
                    image: name(i),
                    source,
                })?;
            images += 1;
            on_image();
        }
    }
    Ok(Evaluation {
        confusion,
        images,
        model_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_scores_come_from_the_grouped_matrix() {
        // road (flat) predicted as sidewalk (flat): wrong class, right category.
        let mut confusion = ConfusionMatrix::new(NUM_TRAIN_CLASSES, 255);
        confusion.update(&[1u8, 0], &[0u8, 0]).unwrap();
        let e = Evaluation {
            confusion,
            images: 1,
            model_time: Duration::from_millis(500),
        };
        assert!((e.per_class_iou()[0] - 0.5).abs() < 1e-12);
        assert_eq!(e.per_class_iou()[1], 0.0);
        assert_eq!(e.named_category_iou()[0], ("flat", 1.0));
        assert!(e.per_category_iou()[1..].iter().all(|v| v.is_nan()));
        assert_eq!(e.category_mean_iou(), 1.0);
        assert!((e.fps() - 2.0).abs() < 1e-9);
    }
}

//! Scoring a model on a labelled split: the one implementation behind `fastscnn eval` and the
//! validation runs of training.
//!
//! Predictions are scored at the label's full resolution, as the Cityscapes benchmark does: when
//! the input was scaled down, the logits are resized back to the label size before the argmax
//! ([`FastScnn::predict_at`]).

use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use fastscnn_data::labels::{train_id_categories, CATEGORY_NAMES};
use fastscnn_data::{ClassTable, Loader, IGNORE_TRAIN_ID};
use fastscnn_model::FastScnn;

use crate::metrics::{nan_mean, ConfusionMatrix, MetricsError};

/// Why an evaluation stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Returned before any image is read when the model does not score the dataset's classes.
    #[error("the weights classify {model} classes, but the dataset's labels have {dataset}")]
    ClassCount {
        /// The number of classes the model outputs.
        model: usize,
        /// The number of classes of the dataset.
        dataset: usize,
    },
    /// Returned when a batch of the split comes without labels.
    #[error("{image}: has no label to score against")]
    Unlabelled {
        /// The path of the batch's first image.
        image: String,
    },
    /// Returned when an image or its label cannot be loaded.
    #[error(transparent)]
    Data(#[from] fastscnn_data::DataError),
    /// Returned when a prediction and its label cannot be scored together.
    #[error("{image}: {cause}")]
    Metrics {
        /// The path of the image scored.
        image: String,
        /// Why the pair was refused.
        cause: MetricsError,
    },
    /// Returned when the model's forward pass (with the resize and argmax) fails on a batch.
    #[error("{image}: {cause}")]
    Network {
        /// The path of the batch's first image.
        image: String,
        /// The error of the forward pass.
        cause: Box<fastscnn_model::ModelError>,
    },
    /// Returned when a batch cannot be moved to the device or its predictions and labels cannot
    /// be read back.
    #[error("{}", fastscnn_model::candle_message(.0))]
    Candle(candle_core::Error),
}

/// candle's error as the `Candle` variant, which shows it and is the end of the chain (its
/// `source` is `None`): its message is already in ours.
impl From<candle_core::Error> for EvalError {
    fn from(error: candle_core::Error) -> Self {
        Self::Candle(error)
    }
}

/// What one pass over a split measured.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Over the dataset's classes, ignored pixels left out.
    pub confusion: ConfusionMatrix,
    /// The classes scored, in index order.
    pub classes: ClassTable,
    /// The number of images scored.
    pub images: usize,
    /// Time in the model (forward, resize, argmax), not in loading.
    pub model_time: Duration,
}

impl Evaluation {
    /// IoU of each class in index order; NaN for a class in neither the labels nor the
    /// predictions.
    pub fn per_class_iou(&self) -> Vec<f64> {
        self.confusion.per_class_iou()
    }

    /// The benchmark's class mIoU: the mean of the defined per-class IoUs.
    pub fn mean_iou(&self) -> f64 {
        self.confusion.mean_iou()
    }

    /// Whether the classes are Cityscapes' 19, which group into its seven categories.
    pub fn has_categories(&self) -> bool {
        self.classes == ClassTable::cityscapes()
    }

    /// IoU of each of Cityscapes' seven categories, from the category-level confusion matrix;
    /// `None` for other classes.
    pub fn per_category_iou(&self) -> Option<Vec<f64>> {
        self.has_categories().then(|| {
            self.confusion
                .grouped(&train_id_categories(), CATEGORY_NAMES.len())
                .per_class_iou()
        })
    }

    /// The benchmark's category mIoU: the mean of the defined category IoUs; `None` for classes
    /// other than Cityscapes'.
    pub fn category_mean_iou(&self) -> Option<f64> {
        self.per_category_iou().map(|iou| nan_mean(&iou))
    }

    /// Correctly classified pixels over scored pixels, ignore pixels left out; NaN when none
    /// was scored.
    pub fn pixel_accuracy(&self) -> f64 {
        self.confusion.pixel_accuracy()
    }

    /// Images per second of model time.
    pub fn fps(&self) -> f64 {
        self.images as f64 / self.model_time.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// (class name, IoU) in index order.
    pub fn named_class_iou(&self) -> Vec<(&str, f64)> {
        self.classes
            .names()
            .into_iter()
            .zip(self.per_class_iou())
            .collect()
    }

    /// (category name, IoU) in category order; `None` for classes other than Cityscapes'.
    pub fn named_category_iou(&self) -> Option<Vec<(&'static str, f64)>> {
        self.per_category_iou()
            .map(|iou| CATEGORY_NAMES.into_iter().zip(iou).collect())
    }
}

/// Runs `model` over every batch of `loader`'s epoch 0 on `device` (the images converted to the
/// model's dtype) and accumulates one confusion matrix; `on_image` is called once per scored
/// image (for progress bars).
pub fn evaluate(
    model: &FastScnn,
    loader: &Loader,
    classes: &ClassTable,
    device: &Device,
    mut on_image: impl FnMut(),
) -> Result<Evaluation, EvalError> {
    if model.num_classes() != classes.len() {
        return Err(EvalError::ClassCount {
            model: model.num_classes(),
            dataset: classes.len(),
        });
    }
    // Every loaded label marks ignored pixels with 255, whatever the dataset's own value.
    let mut confusion = ConfusionMatrix::new(classes.len(), IGNORE_TRAIN_ID as u32);
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
            .predict_at(
                &batch.images.to_device(device)?.to_dtype(model.dtype())?,
                h,
                w,
            )
            .map_err(|source| EvalError::Network {
                image: name(0),
                cause: Box::new(source),
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
                    cause: source,
                })?;
            images += 1;
            on_image();
        }
    }
    Ok(Evaluation {
        confusion,
        classes: classes.clone(),
        images,
        model_time,
    })
}

#[cfg(test)]
mod tests {
    use fastscnn_data::NUM_TRAIN_CLASSES;

    use super::*;

    #[test]
    fn category_scores_come_from_the_grouped_matrix() {
        // road (flat) predicted as sidewalk (flat): wrong class, right category.
        let mut confusion = ConfusionMatrix::new(NUM_TRAIN_CLASSES, 255);
        confusion.update(&[1u8, 0], &[0u8, 0]).unwrap();
        let e = Evaluation {
            confusion,
            classes: ClassTable::cityscapes(),
            images: 1,
            model_time: Duration::from_millis(500),
        };
        assert!((e.per_class_iou()[0] - 0.5).abs() < 1e-12);
        assert_eq!(e.per_class_iou()[1], 0.0);
        assert_eq!(e.named_category_iou().unwrap()[0], ("flat", 1.0));
        assert!(e.per_category_iou().unwrap()[1..]
            .iter()
            .all(|v| v.is_nan()));
        assert_eq!(e.category_mean_iou(), Some(1.0));
        let other = Evaluation {
            classes: ClassTable::for_count(NUM_TRAIN_CLASSES + 1),
            confusion: ConfusionMatrix::new(NUM_TRAIN_CLASSES + 1, 255),
            ..e
        };
        assert!(other.named_category_iou().is_none() && other.category_mean_iou().is_none());
        assert_eq!(other.named_class_iou()[19].0, "class_19");
        assert!((e.fps() - 2.0).abs() < 1e-9);
    }
}

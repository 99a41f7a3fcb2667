//! The recipe of a run: everything that decides what it computes, saved with every checkpoint,
//! and the checks a recipe passes before anything is built for it.

use std::path::PathBuf;

use fastscnn_core::layers::DEFAULT_DROPOUT;
use fastscnn_data::{AugmentConfig, DatasetFormat};
use fastscnn_model::WeightLayout;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Scaling a frame up more than this only makes a crop of a few source pixels.
pub const MAX_SCALE: f32 = 8.0;

/// What a run does to a frame before its crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Augment {
    /// The paper's: a random scale from the recipe's range, a horizontal flip, brightness and
    /// colour noise ([`AugmentConfig::paper`]).
    #[default]
    #[serde(rename = "paper")]
    Paper,
    /// Nothing: the crop is taken from the frame at its own size and colours, so a crop the size
    /// of the frame is the frame (a step can then be compared with another implementation's).
    #[serde(rename = "none")]
    CropOnly,
}

impl Augment {
    /// The name `--augment` takes and recipes store: `paper` or `none`.
    pub fn name(self) -> &'static str {
        match self {
            Augment::Paper => "paper",
            Augment::CropOnly => "none",
        }
    }
}

impl std::str::FromStr for Augment {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "paper" => Ok(Augment::Paper),
            "none" => Ok(Augment::CropOnly),
            _ => Err(format!("`{s}` is not an augmentation: paper or none")),
        }
    }
}

fn default_dropout() -> f32 {
    DEFAULT_DROPOUT
}

/// Everything that decides what a run computes; saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// `reference` or `openmmlab`: the network preset and the key names checkpoints use.
    pub layout: String,
    /// Split trained on, a folder name under `leftImg8bit/` and `gtFine/` (default `train`).
    pub train_split: String,
    /// Validation split; `None` trains without validating.
    pub val_split: Option<String>,
    /// Total iterations (optimiser steps) of the run; the learning rate decays to 0 over them.
    pub iters: u64,
    /// Crops per batch (default 12, the paper's).
    pub batch_size: usize,
    /// Crop (height, width).
    pub crop: (usize, usize),
    /// Range (min, max) of the random rescaling applied before cropping (default 0.5–2), with
    /// 0 < min <= max <= `MAX_SCALE`; 1–1 when `augment` is [`Augment::CropOnly`].
    pub scale_range: (f32, f32),
    /// The augmentation before the crop (default the paper's). Recipes saved without it read
    /// as the paper's, which they ran with.
    #[serde(default)]
    pub augment: Augment,
    /// Probability of every dropout of the network, in [0, 1) (default 0.1, the public
    /// implementations'). Recipes saved without it read as 0.1, which they ran with.
    #[serde(default = "default_dropout")]
    pub dropout: f32,
    /// Base learning rate of the poly schedule (default 0.045).
    pub lr: f64,
    /// Exponent of the poly decay (default 0.9).
    pub power: f64,
    /// Iterations of linear warm-up from a tenth of the scheduled rate (default 0, none).
    pub warmup_iters: u64,
    /// SGD momentum, in [0, 1) (default 0.9).
    pub momentum: f64,
    /// L2 weight decay, applied to convolution weights other than depthwise ones (default 4e-5).
    pub weight_decay: f64,
    /// Weight of each auxiliary head's loss added to the main loss (default 0.4).
    pub aux_weight: f64,
    /// OHEM (threshold, minimum kept pixels), off by default.
    pub ohem: Option<(f32, usize)>,
    /// Seed of the weight initialisation, batch order, augmentation and dropout (default 0).
    pub seed: u64,
    /// Validate and checkpoint every this many iterations (and at the end).
    pub val_every: u64,
    /// Log a line every this many iterations.
    pub log_every: u64,
    /// Weights the run started from, if any.
    pub init: Option<PathBuf>,
    /// The dataset layout, `cityscapes` or `folder`; `None` tells it from the root. Recipes
    /// saved without it read as `None`.
    #[serde(default)]
    pub dataset_format: Option<String>,
}

impl TrainConfig {
    /// The paper's recipe: batch 12, 1024x1024 crops, scale 0.5–2, SGD momentum 0.9, weight
    /// decay 4e-5, poly LR 0.045 with power 0.9, auxiliary weight 0.4.
    pub fn paper(iters: u64) -> Self {
        Self {
            layout: WeightLayout::Reference.name().into(),
            train_split: "train".into(),
            val_split: Some("val".into()),
            iters,
            batch_size: 12,
            crop: (1024, 1024),
            scale_range: (0.5, 2.0),
            augment: Augment::Paper,
            dropout: DEFAULT_DROPOUT,
            lr: 0.045,
            power: 0.9,
            warmup_iters: 0,
            momentum: 0.9,
            weight_decay: 4e-5,
            aux_weight: 0.4,
            ohem: None,
            seed: 0,
            val_every: 1000,
            log_every: 10,
            init: None,
            dataset_format: None,
        }
    }

    /// The dataset layout asked for; `None`: told from the root.
    pub fn dataset_format(&self) -> Result<Option<DatasetFormat>> {
        self.dataset_format
            .as_deref()
            .map(|name| name.parse().map_err(TrainError::Config))
            .transpose()
    }

    /// Refuses a recipe that cannot run or would run out of memory, before anything is built:
    /// a resumed run's saved recipe is checked the same way as a new one's.
    pub(crate) fn validate(&self, max_batch_pixels: u64) -> Result<WeightLayout> {
        let invalid = |why: String| Err(TrainError::Config(why));
        let layout = self
            .layout
            .parse::<WeightLayout>()
            .map_err(TrainError::Config)?;
        self.dataset_format()?;
        fastscnn_data::dataset::check_split_name(&self.train_split)?;
        if let Some(split) = &self.val_split {
            fastscnn_data::dataset::check_split_name(split)?;
        }
        if self.iters == 0 {
            return invalid("the run needs at least one iteration".into());
        }
        if self.batch_size == 0 {
            return invalid("the batch size must be at least 1".into());
        }
        let (crop_h, crop_w) = self.crop;
        if crop_h == 0 || crop_w == 0 {
            return invalid(format!("crop {crop_h}x{crop_w} has no pixels"));
        }
        let batch_pixels = (self.batch_size as u64)
            .saturating_mul(crop_h as u64)
            .saturating_mul(crop_w as u64);
        if batch_pixels > max_batch_pixels {
            return invalid(format!(
                "batch size {} with crop {crop_h}x{crop_w}: {} a batch, over the budget of {}",
                self.batch_size,
                fastscnn_data::format_pixels(batch_pixels),
                fastscnn_data::format_pixels(max_batch_pixels),
            ));
        }
        let (lo, hi) = self.scale_range;
        if !(lo > 0.0 && lo <= hi && hi <= MAX_SCALE) {
            return invalid(format!(
                "scale range {lo}-{hi} is not MIN-MAX with 0 < MIN <= MAX <= {MAX_SCALE}"
            ));
        }
        if self.augment == Augment::CropOnly && (lo, hi) != (1.0, 1.0) {
            return invalid(format!(
                "augmentation `none` does not rescale: scale range {lo}-{hi} needs `paper`"
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return invalid(format!("learning rate {} must be positive", self.lr));
        }
        for (name, value, top) in [
            ("the LR power", self.power, f64::INFINITY),
            ("the weight decay", self.weight_decay, f64::INFINITY),
            ("the auxiliary weight", self.aux_weight, f64::INFINITY),
            ("the momentum", self.momentum, 1.0),
        ] {
            if !(value.is_finite() && value >= 0.0 && value < top) {
                return invalid(format!("{name} {value} is out of range"));
            }
        }
        if let Some((threshold, _)) = self.ohem {
            if !(threshold > 0.0 && threshold <= 1.0) {
                return invalid(format!("OHEM threshold {threshold} is not in (0, 1]"));
            }
        }
        if self.val_every == 0 || self.log_every == 0 {
            return invalid("--val-every and the log interval must be at least 1".into());
        }
        if self.warmup_iters >= self.iters {
            return invalid(format!(
                "{} warm-up iterations leave nothing of a {}-iteration run",
                self.warmup_iters, self.iters
            ));
        }
        Ok(layout)
    }

    pub(crate) fn augmentation(&self) -> AugmentConfig {
        match self.augment {
            Augment::Paper => AugmentConfig {
                scale_range: self.scale_range,
                ..AugmentConfig::paper(self.crop.0, self.crop.1)
            },
            Augment::CropOnly => AugmentConfig {
                crop: self.crop,
                scale_range: (1.0, 1.0),
                hflip: false,
                brightness: 0.0,
                channel_noise: 0.0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_recipe_is_the_default_and_is_checked() {
        let c = TrainConfig::paper(1000);
        assert_eq!(
            (c.batch_size, c.crop, c.lr, c.momentum),
            (12, (1024, 1024), 0.045, 0.9)
        );
        assert_eq!((c.weight_decay, c.aux_weight, c.power), (4e-5, 0.4, 0.9));
        // The paper's batch: 12 crops of 1024x1024.
        let budget = 12 << 20;
        assert!(c.validate(budget).is_ok());
        assert!(c.validate(budget - 1).is_err());
        for bad in [
            TrainConfig {
                iters: 0,
                ..c.clone()
            },
            TrainConfig {
                lr: f64::NAN,
                ..c.clone()
            },
            TrainConfig {
                layout: "caffe".into(),
                ..c.clone()
            },
            TrainConfig {
                batch_size: 4_000_000_000,
                ..c.clone()
            },
            TrainConfig {
                crop: (0, 1024),
                ..c.clone()
            },
            TrainConfig {
                scale_range: (0.5, 1e30),
                ..c.clone()
            },
            TrainConfig {
                scale_range: (f32::NAN, 2.0),
                ..c.clone()
            },
            TrainConfig {
                momentum: 1.0,
                ..c.clone()
            },
            TrainConfig {
                weight_decay: -1.0,
                ..c.clone()
            },
            TrainConfig {
                aux_weight: f64::INFINITY,
                ..c.clone()
            },
            TrainConfig {
                ohem: Some((f32::NAN, 100)),
                ..c.clone()
            },
            TrainConfig {
                dropout: 1.0,
                ..c.clone()
            },
            TrainConfig {
                dropout: f32::NAN,
                ..c.clone()
            },
            TrainConfig {
                augment: Augment::CropOnly,
                ..c.clone()
            },
        ] {
            assert!(bad.validate(budget).is_err(), "{bad:?}");
        }
        let plain = TrainConfig {
            augment: Augment::CropOnly,
            scale_range: (1.0, 1.0),
            dropout: 0.0,
            ..c.clone()
        };
        assert!(plain.validate(budget).is_ok());
        let a = plain.augmentation();
        assert_eq!((a.scale_range, a.hflip), ((1.0, 1.0), false));
        assert_eq!((a.brightness, a.channel_noise, a.crop), (0.0, 0.0, c.crop));
    }

    #[test]
    fn recipes_saved_before_augment_and_dropout_read_as_what_they_ran() {
        let mut json = serde_json::to_value(TrainConfig::paper(10)).unwrap();
        let map = json.as_object_mut().unwrap();
        assert_eq!(map["augment"], "paper");
        map.remove("augment");
        map.remove("dropout");
        let old: TrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old, TrainConfig::paper(10));
        assert_eq!("none".parse::<Augment>(), Ok(Augment::CropOnly));
        assert!("flip".parse::<Augment>().is_err());
    }
}

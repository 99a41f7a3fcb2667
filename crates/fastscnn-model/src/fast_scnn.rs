//! The whole network.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use fastscnn_core::layers::{AuxHead, BatchNormMode, Classifier, FeatureFusion, NormOptions};
use fastscnn_core::ops::resize_bilinear;

use crate::error::{ModelError, Result};
use crate::global_feature_extractor::GlobalFeatureExtractor;
use crate::learning_to_downsample::LearningToDownsample;
use crate::weights::WeightFile;
use crate::FastScnnConfig;

/// Key of the classifier's last convolution in the reference layout; its first dimension is the
/// number of classes.
const REFERENCE_CLASSIFIER_KEY: &str = "classifier.conv.1.weight";
const REFERENCE_AUX_PREFIX: &str = "auxlayer.";

/// How to build the network from weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub batch_norm: BatchNormMode,
    pub dtype: DType,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            batch_norm: BatchNormMode::Folded,
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// Every intermediate of one forward pass, named as the parity fixtures name them.
#[derive(Debug, Clone)]
pub struct FastScnnStages {
    /// Learning-to-downsample output, 1/8 resolution.
    pub higher_res: Tensor,
    /// Global feature extractor output (after pyramid pooling), 1/32 resolution.
    pub global: Tensor,
    /// Feature fusion output, 1/8 resolution.
    pub fused: Tensor,
    /// Classifier output before upsampling, 1/8 resolution.
    pub classifier: Tensor,
    /// Class scores at the input resolution.
    pub logits: Tensor,
    /// Auxiliary head's scores at the input resolution, when asked for and present.
    pub aux_logits: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct FastScnn {
    config: FastScnnConfig,
    learning_to_downsample: LearningToDownsample,
    global_feature_extractor: GlobalFeatureExtractor,
    feature_fusion: FeatureFusion,
    classifier: Classifier,
    aux_head: Option<AuxHead>,
}

impl FastScnn {
    /// Builds the network from a `VarBuilder` in the reference key layout; the auxiliary head is
    /// read only when `with_aux_head`.
    pub fn new(
        config: &FastScnnConfig,
        with_aux_head: bool,
        norm: NormOptions,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let aux_head = if with_aux_head {
            Some(AuxHead::new(
                config.higher_res_channels(),
                config.aux_hidden_channels,
                config.num_classes,
                norm,
                vb.pp("auxlayer"),
            )?)
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            learning_to_downsample: LearningToDownsample::new(
                config,
                norm,
                vb.pp("learning_to_downsample"),
            )?,
            global_feature_extractor: GlobalFeatureExtractor::new(
                config,
                norm,
                vb.pp("global_feature_extractor"),
            )?,
            feature_fusion: FeatureFusion::new(
                &config.feature_fusion(),
                norm,
                vb.pp("feature_fusion"),
            )?,
            classifier: Classifier::new(
                config.fusion_channels,
                config.num_classes,
                norm,
                vb.pp("classifier"),
            )?,
            aux_head,
        })
    }

    /// Loads a safetensors checkpoint with the reference implementation's key names; the number of
    /// classes and the presence of the auxiliary head come from the file.
    pub fn from_safetensors(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        Self::from_weights(&WeightFile::open_safetensors(path)?, options)
    }

    /// Builds the network that `weights` describe, checking every key and shape.
    pub fn from_weights(weights: &WeightFile, options: &LoadOptions) -> Result<Self> {
        let config = reference_config_for(weights)?;
        let with_aux = weights.keys().any(|k| k.starts_with(REFERENCE_AUX_PREFIX));
        let norm = NormOptions {
            mode: options.batch_norm,
            eps: config.bn_eps,
        };
        weights.build(options.dtype, &options.device, |vb| {
            Self::new(&config, with_aux, norm, vb)
        })
    }

    pub fn config(&self) -> &FastScnnConfig {
        &self.config
    }

    pub fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    pub fn has_aux_head(&self) -> bool {
        self.aux_head.is_some()
    }

    /// Runs the network on a normalised (N, 3, H, W) batch of any height and width and returns every
    /// intermediate; the auxiliary logits only when `with_aux` and the head was loaded.
    pub fn forward_stages(
        &self,
        x: &Tensor,
        with_aux: bool,
    ) -> candle_core::Result<FastScnnStages> {
        let (_, _, h, w) = x.dims4()?;
        let higher_res = self.learning_to_downsample.forward(x)?;
        let global = self.global_feature_extractor.forward(&higher_res)?;
        let fused = self.feature_fusion.forward(&higher_res, &global)?;
        let classifier = self.classifier.forward(&fused)?;
        let logits = resize_bilinear(&classifier, h, w, self.config.align_corners)?;
        let aux_logits = match (&self.aux_head, with_aux) {
            (Some(head), true) => Some(resize_bilinear(
                &head.forward(&higher_res)?,
                h,
                w,
                self.config.align_corners,
            )?),
            _ => None,
        };
        Ok(FastScnnStages {
            higher_res,
            global,
            fused,
            classifier,
            logits,
            aux_logits,
        })
    }

    /// The label map (N, H, W) of class indices as u32: the paper's "cls" output.
    pub fn predict(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(x)?.argmax(1)
    }

    /// Per-pixel class probabilities (N, C, H, W): the paper's "prob" output.
    pub fn probabilities(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::softmax(&self.forward(x)?, 1)
    }
}

impl Module for FastScnn {
    /// Logits (N, C, H, W) at the input resolution.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.forward_stages(x, false)?.logits)
    }
}

/// The reference preset with the class count the file's classifier was trained for.
fn reference_config_for(weights: &WeightFile) -> Result<FastScnnConfig> {
    let classifier =
        weights
            .get(REFERENCE_CLASSIFIER_KEY)
            .ok_or_else(|| ModelError::UnknownLayout {
                path: weights.path().to_path_buf(),
                reason: format!("no `{REFERENCE_CLASSIFIER_KEY}` tensor"),
            })?;
    let num_classes = match classifier.dims() {
        [classes, _, 1, 1] if *classes > 0 => *classes,
        dims => {
            return Err(ModelError::UnknownLayout {
                path: weights.path().to_path_buf(),
                reason: format!(
                    "`{REFERENCE_CLASSIFIER_KEY}` has shape {dims:?}, expected (classes, C, 1, 1)"
                ),
            })
        }
    };
    Ok(FastScnnConfig::reference(num_classes))
}

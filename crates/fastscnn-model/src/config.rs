//! The network's hyper-parameters and the presets of the public implementations.

use crate::stages::{FeatureFusionConfig, PyramidPoolingConfig};
use fastscnn_core::Normalization;

use crate::layout::{WeightLayout, AUX_GLOBAL_PREFIX, AUX_HIGHER_RES_PREFIX};

/// The feature map an auxiliary head classifies during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuxSource {
    /// The learning-to-downsample output (1/8 resolution, 64 channels).
    HigherRes,
    /// The global feature extractor output (1/32 resolution, 128 channels).
    Global,
}

impl AuxSource {
    /// The head's canonical key prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            AuxSource::HigherRes => AUX_HIGHER_RES_PREFIX,
            AuxSource::Global => AUX_GLOBAL_PREFIX,
        }
    }
}

/// Everything that shapes a Fast-SCNN. The fields that differ between the public implementations
/// (stem padding, PPM output kernel, fusion biases, `align_corners`, heads) are explicit so that a
/// second layout is a second preset, not a second network.
#[derive(Debug, Clone, PartialEq)]
pub struct FastScnnConfig {
    /// The key names this network reads and writes.
    pub layout: WeightLayout,
    /// Number of classes the classifier and the auxiliary heads score (19 for Cityscapes).
    pub num_classes: usize,
    /// Channels of the input image: 3 (RGB) in both presets.
    pub in_channels: usize,
    /// Output widths of learning-to-downsample: the stem conv and the two DSConvs.
    pub downsample_channels: [usize; 3],
    /// Padding of the 3x3/2 stem conv: 0 in the reference implementation, 1 in OpenMMLab's.
    pub stem_padding: usize,
    /// ReLU after the depthwise half of learning-to-downsample's DSConvs: yes in the reference
    /// implementation, no in OpenMMLab's (`dw_act_cfg=None`).
    pub downsample_depthwise_relu: bool,
    /// Output width of each bottleneck group: 64, 96, 128 in both presets.
    pub bottleneck_channels: [usize; 3],
    /// Stride of each bottleneck group's first block (the others have stride 1): 2, 2, 1, which
    /// takes the 1/8-resolution input down to 1/32.
    pub bottleneck_strides: [usize; 3],
    /// Number of linear bottleneck blocks in each group: 3, 3, 3 in both presets.
    pub bottleneck_blocks: [usize; 3],
    /// Expansion factor of every bottleneck: its hidden width is `expansion` times its input width
    /// (6 in both presets).
    pub expansion: usize,
    /// Output grid size of each pyramid pooling branch: 1, 2, 3, 6 in both presets.
    pub ppm_bins: Vec<usize>,
    /// Kernel of the pyramid pooling output convolution: 1 in the reference implementation, 3 in
    /// OpenMMLab's.
    pub ppm_out_kernel: usize,
    /// Output width of feature fusion, which is also the classifier's width (128 in both presets).
    pub fusion_channels: usize,
    /// Whether feature fusion's two 1x1 convolutions have a bias: yes in the reference
    /// implementation, no in OpenMMLab's.
    pub fusion_conv_bias: bool,
    /// ReLU after the depthwise half of the classifier's DSConvs (OpenMMLab's decode head: none).
    pub classifier_depthwise_relu: bool,
    /// `align_corners` of every bilinear resize, the final upsampling included.
    pub align_corners: bool,
    /// The auxiliary heads, in the order their logits are returned. Loading keeps those the
    /// checkpoint has.
    pub aux_heads: Vec<AuxSource>,
    /// Hidden width of every auxiliary head.
    pub aux_hidden_channels: usize,
    /// Epsilon added to the variance in every BatchNorm: 1e-5 (PyTorch's default) in both presets.
    pub bn_eps: f64,
    /// Per-channel mean and standard deviation the input image is normalised with (ImageNet's in
    /// both presets).
    pub normalization: Normalization,
}

impl FastScnnConfig {
    /// The most widely used public PyTorch implementation, whose state_dict key names this project
    /// reads directly (`../shared/golden/README.md`, section 1).
    pub fn reference(num_classes: usize) -> Self {
        Self {
            layout: WeightLayout::Reference,
            num_classes,
            in_channels: 3,
            downsample_channels: [32, 48, 64],
            stem_padding: 0,
            downsample_depthwise_relu: true,
            bottleneck_channels: [64, 96, 128],
            bottleneck_strides: [2, 2, 1],
            bottleneck_blocks: [3, 3, 3],
            expansion: 6,
            ppm_bins: vec![1, 2, 3, 6],
            ppm_out_kernel: 1,
            fusion_channels: 128,
            fusion_conv_bias: true,
            classifier_depthwise_relu: true,
            align_corners: true,
            aux_heads: vec![AuxSource::HigherRes],
            aux_hidden_channels: 32,
            bn_eps: 1e-5,
            normalization: Normalization::IMAGENET,
        }
    }

    /// mmsegmentation 1.x's Fast-SCNN (`../shared/golden/README.md`, section 3), the architecture
    /// of the published Cityscapes checkpoints: padded stem, linear depthwise convs in the
    /// depthwise-separable blocks (`dw_act_cfg=None`), a 3x3 PPM output conv, bias-free fusion convs, `align_corners=False`
    /// everywhere and `FCNHead` auxiliaries on both the global and the higher-resolution features.
    pub fn openmmlab(num_classes: usize) -> Self {
        Self {
            layout: WeightLayout::OpenMmlab,
            stem_padding: 1,
            downsample_depthwise_relu: false,
            ppm_out_kernel: 3,
            fusion_conv_bias: false,
            classifier_depthwise_relu: false,
            align_corners: false,
            aux_heads: vec![AuxSource::Global, AuxSource::HigherRes],
            ..Self::reference(num_classes)
        }
    }

    /// The width of the global feature extractor's output.
    pub fn global_channels(&self) -> usize {
        self.bottleneck_channels[2]
    }

    /// The width of the learning-to-downsample output, which feature fusion's high-resolution
    /// branch and the `HigherRes` auxiliary head take.
    pub fn higher_res_channels(&self) -> usize {
        self.downsample_channels[2]
    }

    /// The pyramid pooling module of this network, on the global feature extractor's width.
    pub fn pyramid_pooling(&self) -> PyramidPoolingConfig {
        PyramidPoolingConfig {
            in_channels: self.global_channels(),
            out_channels: self.global_channels(),
            bins: self.ppm_bins.clone(),
            out_kernel: self.ppm_out_kernel,
            align_corners: self.align_corners,
        }
    }

    /// The feature fusion module of this network, joining the learning-to-downsample output with
    /// the global features.
    pub fn feature_fusion(&self) -> FeatureFusionConfig {
        FeatureFusionConfig {
            higher_in_channels: self.higher_res_channels(),
            lower_in_channels: self.global_channels(),
            out_channels: self.fusion_channels,
            conv_bias: self.fusion_conv_bias,
            align_corners: self.align_corners,
        }
    }
}

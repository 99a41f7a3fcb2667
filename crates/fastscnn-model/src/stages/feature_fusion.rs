//! Feature fusion: the low-resolution global context brought up to the high-resolution detail
//! branch and added to it.

use candle_core::{bail, Result, Tensor};
use candle_nn::VarBuilder;

use fastscnn_core::layers::{ConvBnAct, ConvConfig, Mode, NormOptions};
use fastscnn_core::ops::resize_bilinear;

/// The widths and choices of a feature fusion module (`FastScnnConfig::feature_fusion` gives a
/// network's).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureFusionConfig {
    /// Width of the high-resolution input: the learning-to-downsample output (64 in both presets).
    pub higher_in_channels: usize,
    /// Width of the low-resolution input: the global features (128 in both presets). It must equal
    /// `out_channels`, as the depthwise convolution keeps the width.
    pub lower_in_channels: usize,
    /// Width of both branches after their 1x1 convolutions, and of the fused output.
    pub out_channels: usize,
    /// The reference implementation gives both 1x1 convolutions a bias (folded away with the BN).
    pub conv_bias: bool,
    /// `align_corners` of the low-resolution branch's bilinear upsampling.
    pub align_corners: bool,
}

/// Feature fusion: the global features upsampled to the high-resolution branch's size, through a
/// 3x3 depthwise and a 1x1 convolution, added to the high-resolution features projected by a 1x1
/// convolution, then rectified.
#[derive(Debug, Clone)]
pub struct FeatureFusion {
    dwconv: ConvBnAct,
    conv_lower_res: ConvBnAct,
    conv_higher_res: ConvBnAct,
    align_corners: bool,
}

impl FeatureFusion {
    /// Reads `dwconv.conv.{0,1}`, `conv_lower_res.{0,1}` and `conv_higher_res.{0,1}`.
    pub fn new(cfg: &FeatureFusionConfig, norm: NormOptions, vb: VarBuilder) -> Result<Self> {
        if cfg.lower_in_channels != cfg.out_channels {
            bail!(
                "feature fusion: the depthwise conv needs lower_in_channels == out_channels, got {} and {}",
                cfg.lower_in_channels,
                cfg.out_channels
            )
        }
        let pointwise = |c_in| {
            let c = ConvConfig::pointwise(c_in, cfg.out_channels);
            if cfg.conv_bias {
                c.with_bias()
            } else {
                c
            }
        };
        Ok(Self {
            dwconv: ConvBnAct::sequential(
                ConvConfig::depthwise(cfg.out_channels, 1),
                true,
                norm,
                vb.pp("dwconv").pp("conv"),
            )?,
            conv_lower_res: ConvBnAct::sequential(
                pointwise(cfg.out_channels),
                false,
                norm,
                vb.pp("conv_lower_res"),
            )?,
            conv_higher_res: ConvBnAct::sequential(
                pointwise(cfg.higher_in_channels),
                false,
                norm,
                vb.pp("conv_higher_res"),
            )?,
            align_corners: cfg.align_corners,
        })
    }

    /// The 3x3 depthwise convolution (BatchNorm, ReLU) on the upsampled low-resolution branch.
    pub fn dwconv(&self) -> &ConvBnAct {
        &self.dwconv
    }

    /// The 1x1 convolution (BatchNorm, no ReLU) on the low-resolution branch after `dwconv`.
    pub fn conv_lower_res(&self) -> &ConvBnAct {
        &self.conv_lower_res
    }

    /// The 1x1 convolution (BatchNorm, no ReLU) on the high-resolution branch.
    pub fn conv_higher_res(&self) -> &ConvBnAct {
        &self.conv_higher_res
    }

    /// `align_corners` of the low-resolution branch's bilinear upsampling.
    pub fn align_corners(&self) -> bool {
        self.align_corners
    }

    /// [`FeatureFusion::forward_mode`] in inference mode.
    pub fn forward(&self, higher: &Tensor, lower: &Tensor) -> Result<Tensor> {
        self.forward_mode(higher, lower, Mode::Inference)
    }

    /// Fuses `higher` (N, C_high, H, W) with `lower` (N, C_low, h, w) into (N, C_out, H, W).
    /// The low-resolution branch is resized to the high-resolution branch's actual size, not by a
    /// fixed x4, so inputs that are not multiples of 32 work.
    pub fn forward_mode(&self, higher: &Tensor, lower: &Tensor, mode: Mode) -> Result<Tensor> {
        let (_, _, h, w) = higher.dims4()?;
        let lower = resize_bilinear(lower, h, w, self.align_corners)?;
        let lower = self.dwconv.forward_mode(&lower, mode)?;
        let lower = self.conv_lower_res.forward_mode(&lower, mode)?;
        let higher = self.conv_higher_res.forward_mode(higher, mode)?;
        (higher + lower)?.relu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use fastscnn_core::testing::random_tensor;

    fn config(lower: usize) -> FeatureFusionConfig {
        FeatureFusionConfig {
            higher_in_channels: 6,
            lower_in_channels: lower,
            out_channels: 8,
            conv_bias: true,
            align_corners: true,
        }
    }

    #[test]
    fn low_resolution_branch_follows_the_high_resolution_size() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let ffm = FeatureFusion::new(&config(8), NormOptions::default(), vb).unwrap();
        // A 250x500 input gives a 31x63 high-resolution branch and an 8x16 low one: not a fixed x4.
        let higher = random_tensor(&[1, 6, 31, 63], 1).unwrap();
        let lower = random_tensor(&[1, 8, 8, 16], 2).unwrap();
        assert_eq!(
            ffm.forward(&higher, &lower).unwrap().dims(),
            &[1, 8, 31, 63]
        );
    }

    #[test]
    fn depthwise_needs_equal_widths() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        assert!(FeatureFusion::new(&config(4), NormOptions::default(), vb).is_err());
    }
}

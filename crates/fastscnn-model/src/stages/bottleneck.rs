//! MobileNet-V2 inverted residual ("linear bottleneck"): expand 1x1, depthwise 3x3, project 1x1.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use fastscnn_core::layers::{ConvBnAct, ConvConfig, Mode, NormOptions};

/// One inverted-residual block of the global feature extractor: a 1x1 expansion, a 3x3
/// depthwise convolution carrying the block's stride and a linear 1x1 projection, with the input
/// added back when the block keeps both resolution and width.
#[derive(Debug, Clone)]
pub struct LinearBottleneck {
    expand: ConvBnAct,
    depthwise: ConvBnAct,
    /// No ReLU after the projection: the "linear" of the name, which keeps the low-dimensional
    /// representation from losing information.
    project: ConvBnAct,
    shortcut: bool,
}

impl LinearBottleneck {
    /// Reads `block.{0,1,2,3}`: `0.conv.{0,1}` expand, `1.conv.{0,1}` depthwise, `2` projection
    /// conv and `3` its BatchNorm.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        expansion: usize,
        stride: usize,
        norm: NormOptions,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("block");
        let hidden = in_channels * expansion;
        Ok(Self {
            expand: ConvBnAct::sequential(
                ConvConfig::pointwise(in_channels, hidden),
                true,
                norm,
                vb.pp("0").pp("conv"),
            )?,
            depthwise: ConvBnAct::sequential(
                ConvConfig::depthwise(hidden, stride),
                true,
                norm,
                vb.pp("1").pp("conv"),
            )?,
            project: ConvBnAct::new(
                ConvConfig::pointwise(hidden, out_channels),
                false,
                norm,
                vb.pp("2"),
                vb.pp("3"),
            )?,
            shortcut: stride == 1 && in_channels == out_channels,
        })
    }

    /// Whether the input is added to the output: only with stride 1 and equal input and output
    /// widths.
    pub fn has_shortcut(&self) -> bool {
        self.shortcut
    }

    /// The 1x1 expansion to `expansion` times the input width, with BatchNorm and ReLU.
    pub fn expand(&self) -> &ConvBnAct {
        &self.expand
    }

    /// The 3x3 depthwise convolution at the block's stride, with BatchNorm and ReLU.
    pub fn depthwise(&self) -> &ConvBnAct {
        &self.depthwise
    }

    /// The 1x1 projection to the output width, with BatchNorm and no ReLU.
    pub fn project(&self) -> &ConvBnAct {
        &self.project
    }
}

impl LinearBottleneck {
    /// Runs the block on an (N, C, H, W) batch in `mode`; a stride-2 block halves H and W,
    /// rounding up.
    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let hidden = self.expand.forward_mode(x, mode)?;
        let hidden = self.depthwise.forward_mode(&hidden, mode)?;
        let y = self.project.forward_mode(&hidden, mode)?;
        if self.shortcut {
            y + x
        } else {
            Ok(y)
        }
    }
}

impl Module for LinearBottleneck {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, Mode::Inference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use fastscnn_core::testing::{max_abs_diff, random_tensor};

    // With all-zero weights (BN scale 0) the residual branch outputs exactly zero, which isolates
    // the shortcut.
    fn zero_block(c_in: usize, c_out: usize, stride: usize) -> LinearBottleneck {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        LinearBottleneck::new(c_in, c_out, 6, stride, NormOptions::default(), vb).unwrap()
    }

    #[test]
    fn shortcut_only_when_stride_one_and_widths_equal() {
        let x = random_tensor(&[1, 8, 6, 10], 1).unwrap();
        let same = zero_block(8, 8, 1);
        assert!(same.has_shortcut());
        assert_eq!(max_abs_diff(&same.forward(&x).unwrap(), &x), 0.0);

        let strided = zero_block(8, 8, 2);
        assert!(!strided.has_shortcut());
        let y = strided.forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 8, 3, 5]);
        assert_eq!(
            y.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );

        let wider = zero_block(8, 12, 1);
        assert!(!wider.has_shortcut());
        assert_eq!(wider.forward(&x).unwrap().dims(), &[1, 12, 6, 10]);
    }
}

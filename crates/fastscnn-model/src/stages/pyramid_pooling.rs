//! Pyramid pooling module: pooled context at several grid sizes, concatenated with the input.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use fastscnn_core::layers::{ConvBnAct, ConvConfig, Mode, NormOptions};
use fastscnn_core::ops::{adaptive_avg_pool2d, resize_bilinear};

/// The choices in which the public Fast-SCNN implementations differ.
#[derive(Debug, Clone, PartialEq)]
pub struct PyramidPoolingConfig {
    /// Width of the input (the last bottleneck group's output); each branch's 1x1 convolution
    /// reduces it to a quarter.
    pub in_channels: usize,
    /// Width of the output convolution over the input and the branches, concatenated.
    pub out_channels: usize,
    /// Output grid of each branch's adaptive average pooling; the paper uses 1, 2, 3, 6.
    pub bins: Vec<usize>,
    /// Kernel of the convolution over the concatenation: 1 in the reference implementation, 3
    /// (padding 1) in OpenMMLab's.
    pub out_kernel: usize,
    /// `align_corners` of the bilinear upsampling of each branch back to the input's size.
    pub align_corners: bool,
}

/// The pyramid pooling module: each branch average-pools the input to a bin x bin grid, applies a
/// 1x1 convolution and is upsampled back to the input's size; the input and the branches,
/// concatenated, go through one output convolution.
#[derive(Debug, Clone)]
pub struct PyramidPooling {
    branches: Vec<(usize, ConvBnAct)>,
    out: ConvBnAct,
    align_corners: bool,
}

impl PyramidPooling {
    /// Reads `conv{1..n}.conv.{0,1}` for the branches and `out.conv.{0,1}`.
    pub fn new(cfg: &PyramidPoolingConfig, norm: NormOptions, vb: VarBuilder) -> Result<Self> {
        let inter = cfg.in_channels / 4;
        let branches = cfg
            .bins
            .iter()
            .enumerate()
            .map(|(i, &bin)| {
                let conv = ConvConfig::pointwise(cfg.in_channels, inter);
                let layer = ConvBnAct::sequential(
                    conv,
                    true,
                    norm,
                    vb.pp(format!("conv{}", i + 1)).pp("conv"),
                )?;
                Ok((bin, layer))
            })
            .collect::<Result<Vec<_>>>()?;
        let concat = cfg.in_channels + inter * cfg.bins.len();
        let out_conv = ConvConfig::dense(
            concat,
            cfg.out_channels,
            cfg.out_kernel,
            1,
            cfg.out_kernel / 2,
        );
        Ok(Self {
            branches,
            out: ConvBnAct::sequential(out_conv, true, norm, vb.pp("out").pp("conv"))?,
            align_corners: cfg.align_corners,
        })
    }
}

impl PyramidPooling {
    /// Each branch's bin count and its 1x1 conv.
    pub fn branches(&self) -> &[(usize, ConvBnAct)] {
        &self.branches
    }

    /// The output convolution (BatchNorm, ReLU) over the concatenation, of kernel `out_kernel`.
    pub fn out(&self) -> &ConvBnAct {
        &self.out
    }

    /// `align_corners` of the branches' bilinear upsampling.
    pub fn align_corners(&self) -> bool {
        self.align_corners
    }

    /// Runs the module on an (N, C, H, W) batch in `mode`, keeping H and W.
    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let mut parts = Vec::with_capacity(self.branches.len() + 1);
        parts.push(x.clone());
        for (bin, conv) in &self.branches {
            let pooled = conv.forward_mode(&adaptive_avg_pool2d(x, *bin, *bin)?, mode)?;
            parts.push(resize_bilinear(&pooled, h, w, self.align_corners)?);
        }
        self.out.forward_mode(&Tensor::cat(&parts, 1)?, mode)
    }
}

impl Module for PyramidPooling {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, Mode::Inference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use fastscnn_core::testing::random_tensor;

    #[test]
    fn reads_a_quarter_width_branch_per_bin_and_keeps_the_size() {
        for out_kernel in [1, 3] {
            let cfg = PyramidPoolingConfig {
                in_channels: 16,
                out_channels: 12,
                bins: vec![1, 2, 3, 6],
                out_kernel,
                align_corners: true,
            };
            let vm = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let ppm = PyramidPooling::new(&cfg, NormOptions::default(), vb).unwrap();
            let shapes: std::collections::HashMap<String, Vec<usize>> = vm
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.dims().to_vec()))
                .collect();
            assert_eq!(shapes["conv4.conv.0.weight"], [4, 16, 1, 1]);
            assert_eq!(
                shapes["out.conv.0.weight"],
                [12, 32, out_kernel, out_kernel]
            );
            // An 8x16 map: the 3x3 and 6x6 bins have uneven windows.
            let y = ppm
                .forward(&random_tensor(&[2, 16, 8, 16], 1).unwrap())
                .unwrap();
            assert_eq!(y.dims(), &[2, 12, 8, 16]);
        }
    }
}

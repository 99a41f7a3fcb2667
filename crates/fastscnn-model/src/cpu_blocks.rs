//! The CPU engine's blocks (`fastscnn-cpu`, plain buffers) made from the loaded candle layers:
//! the weights of every conv, with its BatchNorm folded in at load time, copied out as f32.

use candle_core::{bail, DType, Result, Tensor};
use fastscnn_core::layers::{Conv2d, ConvBnAct, DSConv};
use fastscnn_cpu::{
    AnyConv, DenseConv, DepthwiseConv, FusedBottleneck, FusedClassifier, FusedFeatureFusion,
    FusedPyramidPooling, PointwiseConv, SeparableConv,
};

use crate::stages;

/// A CPU block made from the candle layer `L` it runs.
pub trait FromLayer<L>: Sized {
    /// Copies `layer`'s weights out as f32; fails if a BatchNorm in it was not folded at load
    /// time or a conv is not of the kind the block runs.
    fn from_layer(layer: &L) -> Result<Self>;
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
}

/// The weight and the bias (zeros when the conv has none) of `conv`.
fn parts(conv: &Conv2d) -> Result<(Vec<f32>, Vec<f32>)> {
    let bias = match conv.bias() {
        Some(b) => to_vec(b)?,
        None => vec![0.0; conv.config().out_channels],
    };
    Ok((to_vec(conv.weight())?, bias))
}

/// The conv of a layer whose BatchNorm was folded at load time.
fn folded(layer: &ConvBnAct) -> Result<&Conv2d> {
    if !layer.is_folded() {
        bail!("CPU inference needs the BatchNorm folded into the convolutions (BatchNormMode::Folded)")
    }
    Ok(layer.conv())
}

/// A 1x1 conv without BatchNorm (the classifier's last), rectified or not.
pub fn pointwise_from_conv(conv: &Conv2d, relu: bool) -> Result<PointwiseConv> {
    let c = conv.config();
    if !c.is_pointwise() {
        bail!("not a pointwise convolution: {c:?}")
    }
    let (weight, bias) = parts(conv)?;
    Ok(PointwiseConv::new(
        weight,
        bias,
        c.in_channels,
        c.out_channels,
        relu,
    ))
}

impl FromLayer<ConvBnAct> for PointwiseConv {
    fn from_layer(layer: &ConvBnAct) -> Result<Self> {
        pointwise_from_conv(folded(layer)?, layer.relu())
    }
}

impl FromLayer<ConvBnAct> for DepthwiseConv {
    fn from_layer(layer: &ConvBnAct) -> Result<Self> {
        let conv = folded(layer)?;
        let c = conv.config();
        if !c.depthwise || !(c.stride == 1 || c.stride == 2) {
            bail!("not a depthwise 3x3 convolution of stride 1 or 2: {c:?}")
        }
        let (weight, bias) = parts(conv)?;
        Ok(Self::new(
            weight,
            bias,
            c.in_channels,
            c.stride,
            layer.relu(),
        ))
    }
}

impl FromLayer<ConvBnAct> for DenseConv {
    fn from_layer(layer: &ConvBnAct) -> Result<Self> {
        let conv = folded(layer)?;
        let c = conv.config();
        if c.depthwise {
            bail!("not a dense convolution: {c:?}")
        }
        let (weight, bias) = parts(conv)?;
        Ok(Self::new(
            weight,
            bias,
            c.in_channels,
            c.out_channels,
            c.kernel,
            c.stride,
            c.padding,
            layer.relu(),
        ))
    }
}

impl FromLayer<ConvBnAct> for AnyConv {
    fn from_layer(layer: &ConvBnAct) -> Result<Self> {
        let c = folded(layer)?.config();
        Ok(if c.is_pointwise() {
            AnyConv::Pointwise(PointwiseConv::from_layer(layer)?)
        } else {
            AnyConv::Dense(DenseConv::from_layer(layer)?)
        })
    }
}

impl FromLayer<DSConv> for SeparableConv {
    fn from_layer(layer: &DSConv) -> Result<Self> {
        Ok(Self {
            depthwise: DepthwiseConv::from_layer(layer.depthwise())?,
            pointwise: PointwiseConv::from_layer(layer.pointwise())?,
        })
    }
}

impl FromLayer<stages::LinearBottleneck> for FusedBottleneck {
    fn from_layer(layer: &stages::LinearBottleneck) -> Result<Self> {
        Ok(Self {
            expand: PointwiseConv::from_layer(layer.expand())?,
            depthwise: DepthwiseConv::from_layer(layer.depthwise())?,
            project: PointwiseConv::from_layer(layer.project())?,
            shortcut: layer.has_shortcut(),
        })
    }
}

impl FromLayer<stages::PyramidPooling> for FusedPyramidPooling {
    fn from_layer(layer: &stages::PyramidPooling) -> Result<Self> {
        Ok(Self {
            branches: layer
                .branches()
                .iter()
                .map(|(bin, conv)| Ok((*bin, PointwiseConv::from_layer(conv)?)))
                .collect::<Result<_>>()?,
            out: AnyConv::from_layer(layer.out())?,
            align_corners: layer.align_corners(),
        })
    }
}

impl FromLayer<stages::FeatureFusion> for FusedFeatureFusion {
    /// The lower-resolution branch's 1x1 is linear and the higher's carries the ReLU of the sum,
    /// which the CPU block applies after adding the two.
    fn from_layer(layer: &stages::FeatureFusion) -> Result<Self> {
        let mut higher = PointwiseConv::from_layer(layer.conv_higher_res())?;
        higher.relu = true;
        let mut lower = PointwiseConv::from_layer(layer.conv_lower_res())?;
        lower.relu = false;
        Ok(Self {
            depthwise: DepthwiseConv::from_layer(layer.dwconv())?,
            lower,
            higher,
            align_corners: layer.align_corners(),
        })
    }
}

impl FromLayer<stages::Classifier> for FusedClassifier {
    fn from_layer(layer: &stages::Classifier) -> Result<Self> {
        Ok(Self {
            dsconv1: SeparableConv::from_layer(layer.dsconv1())?,
            dsconv2: SeparableConv::from_layer(layer.dsconv2())?,
            conv: pointwise_from_conv(layer.conv(), false)?,
        })
    }
}

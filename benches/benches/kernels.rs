//! Each fused CPU kernel (`fastscnn_cpu`), most beside the candle-op path it replaced, at the
//! shapes of a 768x1536 input (1/8 resolution: 96x192): the pointwise expansion of the first
//! bottleneck, its stride-2 depthwise conv, the classifier's depthwise conv whole and in the
//! two-row bands it runs in, the fused stem + separable conv, a whole stride-1 bottleneck, and
//! the final resize + argmax (of random scores, and of a scene's regions); the depthwise convs
//! also at the small maps of a 384x768 input. Run with
//! `cargo bench -p fastscnn-benches --bench kernels`.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use fastscnn_benches::random_tensor;
use fastscnn_core::layers::{Conv2d, ConvBnAct, ConvConfig, DSConv, NormOptions};
use fastscnn_core::ops::{depthwise_conv2d, resize_argmax, resize_bilinear};
use fastscnn_core::testing::region_scores;
use fastscnn_cpu::{
    resize_argmax_planes, resize_argmax_scratch_len, resize_planes, zeroed_vec, BufferPool,
    DenseConv, DepthwiseConv, FusedBottleneck, MapView, Seed, SeparableConv, StemSeparable,
};
use fastscnn_model::cpu_blocks::{pointwise_from_conv, FromLayer};
use fastscnn_model::stages::LinearBottleneck;

const H: usize = 96;
const W: usize = 192;

fn data(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn conv(config: ConvConfig, seed: u64) -> Conv2d {
    let (o, i, k, _) = config.weight_shape();
    let weight = random_tensor(&[o, i, k, k], seed).unwrap();
    let bias = random_tensor(&[o], seed + 1).unwrap();
    Conv2d::from_parts(weight, Some(bias), config.with_bias()).unwrap()
}

fn pointwise(c: &mut Criterion) {
    let layer = conv(ConvConfig::pointwise(64, 384), 1);
    let x = random_tensor(&[1, 64, H, W], 3).unwrap();
    let input = data(&x);
    let fused = pointwise_from_conv(&layer, true).unwrap();
    let gemm_crate = fused.clone().without_packed_kernel();
    let mut out = vec![0f32; 384 * H * W];
    let mut group = c.benchmark_group("pointwise_64to384_96x192_relu");
    group.bench_function("candle_matmul_bias_relu", |b| {
        b.iter(|| layer.forward(&x).unwrap().relu().unwrap())
    });
    group.bench_function("fused_gemm_crate", |b| {
        b.iter(|| gemm_crate.run(&input, H * W, &mut out, Seed::Bias))
    });
    group.bench_function("fused_packed_kernel", |b| {
        b.iter(|| fused.run(&input, H * W, &mut out, Seed::Bias))
    });
    group.finish();

    // The projection back: deep and narrow, at the stride-2 block's output size.
    let (h, w) = (H / 2, W / 2);
    let layer = conv(ConvConfig::pointwise(384, 64), 12);
    let x = random_tensor(&[1, 384, h, w], 13).unwrap();
    let input = data(&x);
    let fused = pointwise_from_conv(&layer, false).unwrap();
    let gemm_crate = fused.clone().without_packed_kernel();
    let mut out = vec![0f32; 64 * h * w];
    let mut group = c.benchmark_group("pointwise_384to64_48x96");
    group.bench_function("candle_matmul_bias", |b| {
        b.iter(|| layer.forward(&x).unwrap())
    });
    group.bench_function("fused_gemm_crate", |b| {
        b.iter(|| gemm_crate.run(&input, h * w, &mut out, Seed::Bias))
    });
    group.bench_function("fused_packed_kernel", |b| {
        b.iter(|| fused.run(&input, h * w, &mut out, Seed::Bias))
    });
    group.finish();
}

fn depthwise(c: &mut Criterion) {
    // At 96x192, stride 2: the first bottleneck's 6x-wide tensor; stride 1: the classifier's
    // (128 channels). The small maps of a 384x768 input, where rows are 24 and 48 wide: the
    // third group's 6x-wide tensor (12x24) and the second group's strided one (24x48).
    for (channels, stride, (h, w)) in [
        (384, 2, (H, W)),
        (128, 1, (H, W)),
        (576, 1, (12, 24)),
        (384, 2, (24, 48)),
    ] {
        let layer = conv(ConvConfig::depthwise(channels, stride), 5);
        let x = random_tensor(&[1, channels, h, w], 7).unwrap();
        let input = data(&x);
        let bias = layer.bias().unwrap().reshape((1, channels, 1, 1)).unwrap();
        let weight = layer.weight().clone();
        let fused = DepthwiseConv::new(
            data(&weight),
            data(layer.bias().unwrap()),
            channels,
            stride,
            true,
        );
        let (oh, ow) = fused.output_size(h, w);
        let mut out = vec![0f32; channels * oh * ow];
        let mut group = c.benchmark_group(format!(
            "depthwise3x3_{channels}ch_{h}x{w}_stride{stride}_relu"
        ));
        group.bench_function("candle_custom_op_bias_relu", |b| {
            b.iter(|| {
                depthwise_conv2d(&x, &weight, stride)
                    .unwrap()
                    .broadcast_add(&bias)
                    .unwrap()
                    .relu()
                    .unwrap()
            })
        });
        group.bench_function("fused", |b| b.iter(|| fused.run(&input, h, w, &mut out)));
        group.finish();
    }

    // The classifier's and the feature fusion's depthwise convs as they run at 768x1536 and
    // 1024x2048: bands of two rows, one after another on one thread.
    let channels = 128;
    let layer = conv(ConvConfig::depthwise(channels, 1), 13);
    let input = data(&random_tensor(&[1, channels, H, W], 14).unwrap());
    let fused = DepthwiseConv::new(
        data(layer.weight()),
        data(layer.bias().unwrap()),
        channels,
        1,
        true,
    );
    let mut band = vec![0f32; channels * 2 * W];
    let mut scratch = Vec::new();
    let mut group = c.benchmark_group(format!(
        "depthwise3x3_{channels}ch_{H}x{W}_stride1_relu_two_row_bands"
    ));
    group.bench_function("fused", |b| {
        b.iter(|| {
            for oy0 in (0..H).step_by(2) {
                fused.run_band(
                    0,
                    &input,
                    H * W,
                    0,
                    H,
                    W,
                    oy0,
                    2 * W,
                    &mut band,
                    &mut scratch,
                );
            }
        })
    });
    group.finish();
}

/// Learning to downsample's first two layers (the stem's 3x3/2 conv to 32 channels and the
/// separable conv to 48 after it) on a 768x1536 input: fused, and as candle's layers.
fn stem_separable(c: &mut Criterion) {
    let (h, w) = (8 * H, 8 * W);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let stem = ConvBnAct::sequential(
        ConvConfig::dense(3, 32, 3, 2, 1),
        true,
        NormOptions::default(),
        vb.pp("stem"),
    )
    .unwrap();
    let ds = DSConv::new(32, 48, 2, true, NormOptions::default(), vb.pp("ds")).unwrap();
    let x = random_tensor(&[1, 3, h, w], 15).unwrap();
    let input = data(&x);
    let fused = StemSeparable {
        stem: DenseConv::from_layer(&stem).unwrap(),
        dsconv: SeparableConv::from_layer(&ds).unwrap(),
    };
    let mut pool = BufferPool::default();
    let mut group = c.benchmark_group(format!("stem_separable_3x{h}x{w}"));
    group.bench_function("candle_layers", |b| {
        b.iter(|| ds.forward(&stem.forward(&x).unwrap()).unwrap())
    });
    group.bench_function("fused", |b| {
        b.iter(|| {
            let out = fused.run(MapView::new(&input, 3, h, w), &mut pool);
            pool.give(out);
        })
    });
    group.finish();
}

fn bottleneck(c: &mut Criterion) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let layer = LinearBottleneck::new(64, 64, 6, 1, NormOptions::default(), vb).unwrap();
    let x = random_tensor(&[1, 64, H, W], 9).unwrap();
    let input = data(&x);
    let fused = FusedBottleneck::from_layer(&layer).unwrap();
    let mut pool = BufferPool::default();
    let mut group = c.benchmark_group("bottleneck_64_expand6_96x192_stride1");
    group.bench_function("candle_layers", |b| b.iter(|| layer.forward(&x).unwrap()));
    group.bench_function("fused", |b| {
        b.iter(|| {
            let out = fused.run(MapView::new(&input, 64, H, W), &mut pool);
            pool.give(out);
        })
    });
    group.finish();
}

fn resize_then_argmax(c: &mut Criterion) {
    let (oh, ow) = (8 * H, 8 * W);
    let scores = random_tensor(&[1, 19, H, W], 11).unwrap();
    let input = data(&scores);
    let mut labels = vec![0u32; oh * ow];
    let mut scratch = vec![0f32; resize_argmax_scratch_len(19, (H, W), (oh, ow))];
    let mut group = c.benchmark_group("resize_argmax_19x96x192_to_768x1536");
    group.bench_function("candle_custom_op", |b| {
        b.iter(|| resize_argmax(&scores, oh, ow, true).unwrap())
    });
    group.bench_function("separable", |b| {
        b.iter(|| {
            resize_argmax_planes(
                MapView::new(&input, 19, H, W),
                &mut labels,
                (oh, ow),
                true,
                &mut scratch,
            )
        })
    });
    // Scores of regions, as a scene's: most blocks take their source pixels' shared label.
    let regions = region_scores(19, H, W, 11);
    group.bench_function("separable_regions", |b| {
        b.iter(|| {
            resize_argmax_planes(
                MapView::new(&regions, 19, H, W),
                &mut labels,
                (oh, ow),
                true,
                &mut scratch,
            )
        })
    });
    group.finish();

    // The logits: 90 MB written, into a buffer kept between frames and into a fresh one.
    let mut logits = vec![0f32; 19 * oh * ow];
    let mut group = c.benchmark_group("resize_19x96x192_to_768x1536");
    group.bench_function("candle_custom_op", |b| {
        b.iter(|| resize_bilinear(&scores, oh, ow, true).unwrap())
    });
    group.bench_function("separable_kept_buffer", |b| {
        b.iter(|| resize_planes(MapView::new(&input, 19, H, W), &mut logits, (oh, ow), true))
    });
    group.bench_function("separable_fresh_buffer", |b| {
        b.iter(|| {
            let mut fresh = zeroed_vec::<f32>(19 * oh * ow);
            resize_planes(MapView::new(&input, 19, H, W), &mut fresh, (oh, ow), true);
            fresh
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    pointwise,
    depthwise,
    stem_separable,
    bottleneck,
    resize_then_argmax
);
criterion_main!(benches);

//! The depthwise 3x3 kernel against candle's grouped conv2d (one convolution per channel), at the
//! size of Fast-SCNN's feature-fusion depthwise layer for a 1024x2048 input: 128 channels, 128x256.

use criterion::{criterion_group, criterion_main, Criterion};
use fastscnn_benches::random_tensor;
use fastscnn_core::ops::{depthwise_conv2d, depthwise_conv2d_grouped};

fn depthwise(c: &mut Criterion) {
    let x = random_tensor(&[1, 128, 128, 256], 1).unwrap();
    let w = random_tensor(&[128, 1, 3, 3], 2).unwrap();
    for stride in [1, 2] {
        let mut group = c.benchmark_group(format!("depthwise3x3_128x128x256_stride{stride}"));
        group.bench_function("fastscnn_direct", |b| {
            b.iter(|| depthwise_conv2d(&x, &w, stride).unwrap())
        });
        group.bench_function("candle_grouped_conv2d", |b| {
            b.iter(|| depthwise_conv2d_grouped(&x, &w, stride).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, depthwise);
criterion_main!(benches);

//! One forward pass of the whole model (batch 1, BN folded): logits and the label map at 256x512.

use candle_core::Module;
use criterion::{criterion_group, criterion_main, Criterion};
use fastscnn_benches::{random_tensor, reference_model};

fn model(c: &mut Criterion) {
    let model = reference_model().unwrap();
    let x = random_tensor(&[1, 3, 256, 512], 3).unwrap();
    let mut group = c.benchmark_group("fastscnn_256x512");
    group.sample_size(20);
    group.bench_function("logits", |b| b.iter(|| model.forward(&x).unwrap()));
    group.bench_function("label_map", |b| b.iter(|| model.predict(&x).unwrap()));
    group.finish();
}

criterion_group!(benches, model);
criterion_main!(benches);

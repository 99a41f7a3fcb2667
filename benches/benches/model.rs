//! One forward pass of the whole model (batch 1, BN folded) at the paper's three input sizes
//! (Table 7: full, half and quarter Cityscapes resolution): logits, and the label map.
//! `cargo xtask bench` turns the results into a ms / fps table.

use candle_core::Module;
use criterion::{criterion_group, criterion_main, Criterion};
use fastscnn_benches::{random_tensor, reference_model, MODEL_SIZES};

fn model(c: &mut Criterion) {
    let model = reference_model().unwrap();
    for (h, w) in MODEL_SIZES {
        let x = random_tensor(&[1, 3, h, w], 3).unwrap();
        let mut group = c.benchmark_group(format!("fastscnn_{h}x{w}"));
        group.sample_size(10);
        group.bench_function("logits", |b| b.iter(|| model.forward(&x).unwrap()));
        group.bench_function("label_map", |b| b.iter(|| model.predict(&x).unwrap()));
        group.finish();
    }
}

criterion_group!(benches, model);
criterion_main!(benches);

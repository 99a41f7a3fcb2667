//! Mutation fuzzing of the parsers that take untrusted bytes: the pickle reader, whole PyTorch
//! archives, safetensors files and the image decoding entry. Valid seeds (built here, plus the golden checkpoints when the shared fixtures are
//! present) are mutated by a seeded generator, so every run tries the same inputs and a failure
//! reproduces; `FASTSCNN_FUZZ_ITERS` scales the number of inputs for a longer session. The
//! property: every input ends in `Ok` or `Err`, never a panic, an abort or a stack overflow.

use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use fastscnn_model::pickle;
use fastscnn_model::WeightFile;

/// Inputs per target at scale 1; CI runs this, a fuzzing session raises the scale.
fn iterations(base: usize) -> usize {
    let scale: usize = std::env::var("FASTSCNN_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    base * scale
}

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four mutations of `seed`: bit flips, bytes set to edge values, insertions, deletions,
/// truncation, and a chunk repeated (which makes nesting and lengths grow).
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len());
        match rng.below(6) {
            0 if !bytes.is_empty() => bytes[at] ^= 1 << rng.below(8),
            1 if !bytes.is_empty() => {
                bytes[at] = [0x00, 0xFF, 0x7F, 0x80, 0x01][rng.below(5)];
            }
            2 => bytes.insert(at, rng.next() as u8),
            3 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            4 => bytes.truncate(at),
            _ if !bytes.is_empty() => {
                let len = 1 + rng.below(16).min(bytes.len() - at);
                let chunk = bytes[at..(at + len).min(bytes.len())].to_vec();
                for _ in 0..1 + rng.below(64) {
                    bytes.splice(at..at, chunk.iter().copied());
                }
            }
            _ => {}
        }
    }
    bytes
}

/// Runs `target` on `count` mutants of each seed, naming the first input that panics.
fn fuzz(name: &str, seeds: &[Vec<u8>], count: usize, mut target: impl FnMut(&[u8])) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
    for i in 0..count {
        let seed = &seeds[i % seeds.len()];
        let input = mutate(seed, &mut rng);
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let dump = std::env::temp_dir().join(format!("fastscnn-fuzz-{name}-{i}.bin"));
            std::fs::write(&dump, &input).unwrap();
            panic!("{name}: input {i} panicked; saved to {}", dump.display());
        }
    }
}

/// A small state_dict as torch writes it: two float tensors.
fn state_dict_pickle() -> Vec<u8> {
    let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(".to_vec();
    for (key, storage) in [("a", "0"), ("b", "1")] {
        p.extend(b"X\x01\x00\x00\x00");
        p.extend(key.as_bytes());
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00");
        p.extend(storage.as_bytes());
        p.extend(b"X\x03\x00\x00\x00cpuK\x04tQ");
        p.extend(b"K\x00K\x02K\x02\x86K\x02K\x01\x86\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend(b"u.");
    p
}

fn pth_bytes(pickle: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    for storage in ["0", "1"] {
        zip.start_file(format!("archive/data/{storage}"), stored)
            .unwrap();
        zip.write_all(&[0u8; 16]).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// The pickles of the golden checkpoints, when the shared fixtures are there.
fn golden_pickles() -> Vec<Vec<u8>> {
    let Some(shared) = fastscnn_core::testing::shared_dir() else {
        return Vec::new();
    };
    let mut pickles = Vec::new();
    for name in ["fastscnn_seed0_c19.pth", "mmseg_fastscnn_c19.pth"] {
        let file = std::fs::File::open(shared.join("golden").join(name)).unwrap();
        let mut archive = zip::ZipArchive::new(file).unwrap();
        let pkl = (0..archive.len())
            .find(|&i| {
                archive
                    .by_index(i)
                    .unwrap()
                    .name()
                    .unwrap()
                    .ends_with("data.pkl")
            })
            .unwrap();
        let mut bytes = Vec::new();
        archive
            .by_index(pkl)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        pickles.push(bytes);
    }
    pickles
}

#[test]
fn pickles() {
    let mut seeds = vec![state_dict_pickle()];
    seeds.extend(golden_pickles());
    for seed in &seeds {
        pickle::parse(seed).unwrap();
    }
    fuzz("pickle", &seeds, iterations(20000), |bytes| {
        let _ = pickle::parse(bytes);
    });
}

#[test]
fn pytorch_archives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.pth");
    let seed = state_dict_pickle();
    WeightFile::open(write(&path, &pth_bytes(&seed))).unwrap();
    // Mutate the pickle inside a well-formed archive, and the archive itself.
    fuzz("pth-pickle", &[seed], iterations(1000), |pickle| {
        let _ = WeightFile::open(write(&path, &pth_bytes(pickle)));
    });
    let archive = pth_bytes(&state_dict_pickle());
    fuzz("pth-archive", &[archive], iterations(1000), |bytes| {
        let _ = WeightFile::open(write(&path, bytes));
    });
}

fn write<'a>(path: &'a Path, bytes: &[u8]) -> &'a Path {
    std::fs::write(path, bytes).unwrap();
    path
}

#[test]
fn safetensors_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.safetensors");
    let tensors = [
        ("a", Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap()),
        ("b", Tensor::zeros(4, DType::F16, &Device::Cpu).unwrap()),
    ];
    let seed = safetensors::serialize(tensors.iter().map(|(k, v)| (*k, v)), None).unwrap();
    WeightFile::open(write(&path, &seed)).unwrap();
    fuzz("safetensors", &[seed], iterations(2000), |bytes| {
        let _ = WeightFile::open(write(&path, bytes));
    });
}

#[test]
fn image_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..24 * 16 * 3).map(|i| (i * 7 % 253) as u8).collect();
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &pixels,
        24,
        16,
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    let mut jpeg = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80),
        &pixels,
        24,
        16,
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    let path = dir.path().join("f.img");
    for seed in [&png, &jpeg] {
        fastscnn_model::load_rgb_image(write(&path, seed)).unwrap();
    }
    fuzz("image", &[png, jpeg], iterations(3000), |bytes| {
        let _ = fastscnn_model::load_rgb_image_within(write(&path, bytes), 1 << 16);
    });
}

//! Hostile input, generated here: files that lie about their size, are cut short, hold values no
//! weights hold or nest without end; flags out of range or without effect; paths that leave their
//! root or overwrite what the run reads. Each ends in one line naming the file or the flag, a
//! non-zero exit, and nothing of the user's overwritten.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::{DType, Device, Tensor};
use fastscnn_core::testing::jpeg_with_orientation;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder, RgbImage};

mod common;
use common::{assert_clean_failure, assert_usage_error, fastscnn, golden};

const WEIGHTS: &str = "fastscnn_seed0_c19.safetensors";

fn segment(image: &Path, weights: &Path, out_dir: &Path) -> Command {
    let mut cmd = fastscnn();
    cmd.arg("segment")
        .arg(image)
        .arg("--weights")
        .arg(weights)
        .arg("--out-dir")
        .arg(out_dir);
    cmd
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A small PNG whose header declares `width` x `height`.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(&[0, 0, 0], 1, 1, image::ExtendedColorType::Rgb8)
        .unwrap();
    // Signature (8), IHDR length (4), "IHDR" (4), width, height, ..., CRC over "IHDR" + data.
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn jpeg(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    bytes
}

fn golden_image(golden: &Path) -> RgbImage {
    image::open(golden.join("seed0_c19_256x512_input0.png"))
        .unwrap()
        .into_rgb8()
}

fn doctored_weights(golden: &Path, dest: &Path, change: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = candle_core::safetensors::load(golden.join(WEIGHTS), &Device::Cpu).unwrap();
    change(&mut tensors);
    candle_core::safetensors::save(&tensors, dest).unwrap();
}

#[test]
fn a_header_declaring_a_huge_image_is_refused_before_decoding() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.png");
    std::fs::write(&huge, png_declaring(12000, 12000)).unwrap();
    assert_clean_failure(
        &mut segment(&huge, &golden.join(WEIGHTS), dir.path()),
        "huge.png: 12000x12000 is 144.0 megapixels",
    );
    assert_clean_failure(
        &mut segment(&huge, &golden.join(WEIGHTS), dir.path()),
        "--input-scale 0.25",
    );
    assert_clean_failure(
        fastscnn().args(["bench", "--size", "100000x100000"]),
        "--size 100000x100000",
    );
    // A reduced scale raises the budget sixteen times at most.
    let vast = dir.path().join("vast.png");
    std::fs::write(&vast, png_declaring(60000, 60000)).unwrap();
    assert_clean_failure(
        segment(&vast, &golden.join(WEIGHTS), dir.path()).args(["--input-scale", "0.01"]),
        "vast.png: 60000x60000 is 3600.0 megapixels",
    );
}

#[test]
fn a_truncated_jpeg_is_refused() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bytes = jpeg(&golden_image(&golden));
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    assert_clean_failure(
        &mut segment(&cut, &golden.join(WEIGHTS), dir.path()),
        "cut.jpg",
    );
    assert_clean_failure(
        &mut segment(&cut, &golden.join(WEIGHTS), dir.path()),
        "truncated",
    );
    assert!(!dir.path().join("cut_color.png").exists());
}

#[test]
fn photos_are_segmented_upright() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    // 256 wide, 128 high, stored with "rotate 90° clockwise to view": viewers show it 128x256.
    let image = image::imageops::resize(
        &golden_image(&golden),
        256,
        128,
        image::imageops::FilterType::Triangle,
    );
    let photo = dir.path().join("photo.jpg");
    std::fs::write(&photo, jpeg_with_orientation(&jpeg(&image), 6)).unwrap();
    segment(&photo, &golden.join(WEIGHTS), dir.path())
        .assert()
        .success();
    let colour = image::open(dir.path().join("photo_color.png")).unwrap();
    assert_eq!((colour.width(), colour.height()), (128, 256));
}

#[test]
fn weights_no_network_could_hold_are_refused() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = golden.join("seed0_c19_256x512_input0.png");
    let conv = "learning_to_downsample.conv.conv.0.weight";
    let var = "learning_to_downsample.conv.conv.1.running_var";
    type Change = Box<dyn Fn(&Tensor) -> Tensor>;
    let cases: [(&str, &str, Change); 4] = [
        ("nan", conv, Box::new(|t| (t * f64::NAN).unwrap())),
        ("inf", conv, Box::new(|t| (t + f64::INFINITY).unwrap())),
        ("int", conv, Box::new(|t| t.to_dtype(DType::I64).unwrap())),
        ("negvar", var, Box::new(|t| t.neg().unwrap())),
    ];
    for (name, key, change) in cases {
        let weights = dir.path().join(format!("{name}.safetensors"));
        doctored_weights(&golden, &weights, |tensors| {
            let changed = change(&tensors[key]);
            tensors.insert(key.to_string(), changed);
        });
        // With a backtrace asked for: still one line, as for every user error.
        assert_clean_failure(
            segment(&image, &weights, dir.path()).env("RUST_BACKTRACE", "1"),
            &format!("{name}.safetensors: tensor `{key}`"),
        );
        assert!(!dir
            .path()
            .join("seed0_c19_256x512_input0_color.png")
            .exists());
    }
}

#[test]
fn any_class_count_is_coloured_and_label_ids_need_cityscapes() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("c200.safetensors");
    common::weights_with_classes(&golden, &weights, 200);
    // Class 150 wins everywhere.
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let mut bias = vec![0f32; 200];
    bias[150] = 10.0;
    tensors.insert(
        "classifier.conv.1.bias".into(),
        Tensor::new(bias, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &weights).unwrap();

    let image = golden.join("seed0_c19_256x512_input0.png");
    segment(&image, &weights, dir.path()).assert().success();
    let colour = image::open(dir.path().join("seed0_c19_256x512_input0_color.png"))
        .unwrap()
        .into_rgb8();
    let expected = fastscnn_data::Palette::for_classes(200).colour(150);
    assert_ne!(expected, [0, 0, 0]);
    assert!(colour.pixels().all(|p| p.0 == expected));
    assert_clean_failure(
        segment(&image, &weights, dir.path()).args(["--format", "labelid"]),
        "--format labelid",
    );
}

#[test]
fn flags_without_effect_or_out_of_range_are_refused() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = golden.join("seed0_c19_256x512_input0.png");
    assert_clean_failure(
        segment(&image, &golden.join(WEIGHTS), dir.path()).args(["--overlay-alpha", "0.3"]),
        "--overlay-alpha",
    );
    assert_usage_error(
        fastscnn().args(["bench", "--threads", "100000"]),
        "--threads",
    );
    assert_usage_error(
        fastscnn().args(["bench", "--iters", "1000000000000"]),
        "--iters",
    );
    assert_usage_error(fastscnn().args(["bench", "--isa", "sse9"]), "--isa");
    // Kernels this processor cannot run: NEON on x86-64, AVX-512 on aarch64 (and on x86-64
    // machines without it).
    let missing = ["neon", "avx512"].into_iter().find(|name| {
        !fastscnn_cpu::Isa::available()
            .iter()
            .any(|isa| isa.name() == *name)
    });
    if let Some(name) = missing {
        assert_clean_failure(fastscnn().args(["bench", "--isa", name]), "--isa");
    }
    // Kernels chosen for a network that runs through candle's ops.
    let weights = golden.join(WEIGHTS);
    assert_clean_failure(
        fastscnn()
            .args([
                "bench",
                "--size",
                "64x128",
                "--candle-ops",
                "--isa",
                "portable",
            ])
            .arg("--weights")
            .arg(&weights),
        "--isa",
    );
    assert_usage_error(
        segment(&image, &golden.join(WEIGHTS), dir.path()).args(["--input-scale", "NaN"]),
        "--input-scale",
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn outputs_never_overwrite_inputs_or_each_other() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    std::fs::copy(golden.join(WEIGHTS), &weights).unwrap();
    let before = std::fs::read(&weights).unwrap();
    let image = dir.path().join("frame.png");
    golden_image(&golden).save(&image).unwrap();

    assert_clean_failure(
        segment(&image, &weights, dir.path())
            .arg("--probs")
            .arg(&weights),
        "--probs would overwrite the weights",
    );
    let same = dir.path().join("scores.safetensors");
    assert_clean_failure(
        segment(&image, &weights, dir.path())
            .arg("--probs")
            .arg(&same)
            .arg("--save-logits")
            .arg(dir.path().join(".").join("scores.safetensors")),
        "--save-logits and --probs would write the same file",
    );
    // `frame_color.png` is an input here and frame.png's colour map.
    let colour = dir.path().join("frame_color.png");
    std::fs::write(&colour, b"mine").unwrap();
    assert_clean_failure(
        fastscnn()
            .arg("segment")
            .arg(&image)
            .arg(&colour)
            .arg("--weights")
            .arg(&weights)
            .arg("--out-dir")
            .arg(dir.path()),
        "frame_color.png: the color output would overwrite input",
    );
    assert_clean_failure(
        segment(&image, &weights, dir.path())
            .arg("--probs")
            .arg(dir.path()),
        "--probs names a folder",
    );
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    assert_eq!(std::fs::read(&colour).unwrap(), b"mine");
    assert!(!same.exists());
    assert!(!dir.path().join("frame_trainid.png").exists());
}

#[test]
fn eval_json_never_overwrites_the_split() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let label = dataset_with_label(
        dir.path(),
        &image::GrayImage::from_pixel(64, 32, image::Luma([7])),
    );
    let before = std::fs::read(&label).unwrap();
    assert_clean_failure(
        fastscnn()
            .args(["eval", "--dataset-root"])
            .arg(dir.path())
            .arg("--weights")
            .arg(golden.join(WEIGHTS))
            .arg("--json")
            .arg(&label),
        "--json would overwrite a label of the split",
    );
    assert_eq!(std::fs::read(&label).unwrap(), before);
}

#[test]
fn a_folder_segmented_into_itself_twice_reads_the_same_images() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    golden_image(&golden)
        .save(dir.path().join("frame.png"))
        .unwrap();
    for _ in 0..2 {
        let out = segment(dir.path(), &golden.join(WEIGHTS), dir.path())
            .args(["--format", "all"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.contains("1 image(s)"), "{stdout}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 5);
}

#[test]
fn an_image_too_small_for_the_network_is_named() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.png");
    RgbImage::new(2, 2).save(&tiny).unwrap();
    assert_clean_failure(
        &mut segment(&tiny, &golden.join(WEIGHTS), dir.path()),
        "tiny.png: ",
    );
}

/// A zip holding `archive/data.pkl` = `pickle` and the given data entries: a PyTorch archive.
fn pth(dest: &Path, pickle: &[u8], data: &[(&str, &[u8])]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(dest).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    for (name, bytes) in data {
        zip.start_file(format!("archive/data/{name}"), stored)
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn info(weights: &Path) -> Command {
    let mut cmd = fastscnn();
    cmd.arg("info").arg("--weights").arg(weights);
    cmd
}

#[test]
fn hostile_pytorch_archives_are_refused() {
    let dir = tempfile::tempdir().unwrap();

    let deep = dir.path().join("deep.pth");
    let mut pickle = vec![0x80, 2];
    pickle.extend(std::iter::repeat_n(b']', 100_000));
    pickle.extend(std::iter::repeat_n(b'a', 99_999));
    pickle.push(b'.');
    pth(&deep, &pickle, &[]);
    assert_clean_failure(
        &mut info(&deep),
        "deep.pth: `archive/data.pkl`: pickle byte",
    );
    assert_clean_failure(&mut info(&deep), "nested deeper than 256");

    // {'w': a tensor of 100000x100000 floats whose data is 16 bytes}.
    let huge = dir.path().join("huge.pth");
    let mut p = b"\x80\x02}q\x00(X\x01\x00\x00\x00w".to_vec();
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x01(");
    p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000");
    p.extend(b"X\x03\x00\x00\x00cpuK\x04tQ");
    p.extend(b"K\x00J\xa0\x86\x01\x00J\xa0\x86\x01\x00\x86J\xa0\x86\x01\x00K\x01\x86");
    p.extend(b"\x89ccollections\nOrderedDict\n)RtRu.");
    pth(&huge, &p, &[("0", &[0u8; 16])]);
    assert_clean_failure(&mut info(&huge), "tensor `w`: shape [100000, 100000] needs");

    // The same record with a negative side, and with a storage type no weights have.
    let negative = dir.path().join("negative.pth");
    let mut q = p.clone();
    let at = q
        .windows(5)
        .position(|w| w == b"J\xa0\x86\x01\x00")
        .unwrap();
    q[at + 1..at + 5].copy_from_slice(&(-3i32).to_le_bytes());
    pth(&negative, &q, &[("0", &[0u8; 16])]);
    assert_clean_failure(&mut info(&negative), "tensor `w`: the size is Int(-3)");
    let boolean = dir.path().join("bool.pth");
    let at = p.windows(12).position(|w| w == b"FloatStorage").unwrap();
    let mut r = p[..at].to_vec();
    r.extend(b"BoolStorage");
    r.extend(&p[at + 12..]);
    pth(&boolean, &r, &[("0", &[0u8; 16])]);
    assert_clean_failure(&mut info(&boolean), "storage type torch.BoolStorage");

    let empty = dir.path().join("empty.pth");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&empty).unwrap());
    zip.start_file("readme.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.finish().unwrap();
    assert_clean_failure(&mut info(&empty), "without `data.pkl`");

    let no_tensors = dir.path().join("none.pth");
    pth(&no_tensors, b"\x80\x02}.", &[]);
    assert_clean_failure(&mut info(&no_tensors), "without tensors");
}

fn dataset_with_label(root: &Path, label: &image::GrayImage) -> PathBuf {
    let gt = root.join("gtFine/val/city");
    let images = root.join("leftImg8bit/val/city");
    std::fs::create_dir_all(&gt).unwrap();
    std::fs::create_dir_all(&images).unwrap();
    RgbImage::new(label.width(), label.height())
        .save(images.join("city_000000_000000_leftImg8bit.png"))
        .unwrap();
    let path = gt.join("city_000000_000000_gtFine_labelIds.png");
    label.save(&path).unwrap();
    path
}

#[test]
fn label_ids_outside_the_table_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut label = image::GrayImage::from_pixel(8, 4, image::Luma([7]));
    label.put_pixel(5, 2, image::Luma([200]));
    let path = dataset_with_label(dir.path(), &label);
    assert_clean_failure(
        fastscnn()
            .args(["prepare", "--dataset-root"])
            .arg(dir.path()),
        &format!("{}: pixel (5, 2) holds label id 200", path.display()),
    );
}

#[test]
fn splits_cannot_leave_the_dataset_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    dataset_with_label(&root, &image::GrayImage::from_pixel(8, 4, image::Luma([7])));
    for split in ["../../x", "..", "a/b", "/etc"] {
        assert_clean_failure(
            fastscnn()
                .args(["prepare", "--split", split, "--dataset-root"])
                .arg(&root),
            &format!("split `{split}`: a split is one folder name"),
        );
        assert_clean_failure(
            fastscnn()
                .args(["train", "--iters", "1", "--out"])
                .arg(dir.path().join("run"))
                .args(["--train-split", split, "--dataset-root"])
                .arg(&root),
            &format!("split `{split}`"),
        );
    }
}

#[test]
fn training_budgets_and_the_resumed_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let train = |extra: &[&str]| {
        let mut cmd = fastscnn();
        cmd.args(["train", "--iters", "1", "--dataset-root"])
            .arg(dir.path())
            .arg("--out")
            .arg(dir.path().join("run"))
            .args(extra);
        cmd
    };
    assert_clean_failure(
        &mut train(&["--crop", "100000x100000"]),
        "--max-batch-pixels",
    );
    assert_clean_failure(
        &mut train(&["--batch-size", "100000"]),
        "--max-batch-pixels",
    );
    assert_usage_error(&mut train(&["--resume", "--lr", "0.1"]), "--resume");
    // Weights to start from that the run would overwrite.
    let run = dir.path().join("run");
    assert_clean_failure(
        train(&[])
            .arg("--init")
            .arg(run.join("x/../best.safetensors")),
        "the run's best.safetensors would overwrite --init",
    );
    assert!(!dir.path().join("run").exists());
}

//! Pillow parity on small hand-made images covering every PNG mode and JPEG layout that
//! Pillow treats specially, plus error handling (missing, truncated, non-image files).
//!
//! Fixtures: `tests/fixtures/preprocess/`, written by
//! `python3 scripts/make_preprocess_fixtures.py` (deterministic). Expected hashes: printed
//! by the same script from Pillow 10.3.0 `Image.open(p).convert('RGB')` (HWC bytes) and
//! transformers 4.37.2 `CLIPImageProcessor` (size 336, crop 336; `pixel_values[0]` as
//! little-endian f32). The Pillow modes they exercise: I;16 (clipped to 255), RGB;16B,
//! RGBA;16B, LA;16B (high bytes), 1, L;2, L;4, P;4 with a 5-entry palette, P with tRNS,
//! L with tRNS, RGBA; JPEG 4:2:0 / 4:2:2 / progressive 4:4:4 / restart markers / CMYK
//! (Adobe-inverted) / gray / arithmetic-coded, all 37x23 (odd, so edge blocks and upsampling matter).

use std::path::{Path, PathBuf};

use vlguard_ort::export::manifest::PreprocessSpec;
use vlguard_ort::preprocess::{decode_rgb, pixel_values, Error};
use vlguard_ort::util::sha256_hex;

/// (file, sha256 of Pillow's RGB bytes, sha256 of CLIPImageProcessor pixel_values), from
/// `python3 scripts/make_preprocess_fixtures.py`.
const FIXTURES: &[(&str, &str, &str)] = &[
    (
        "arith_420.jpg",
        "a5dd7c12d057110d1b6c128d678cf0f2368cc75097daa9a07ca1af63578884fa",
        "7e3339d88a92e0463562e7eae031bde59a26a15ac1cd6f3329c5f2cfb20e0368",
    ),
    (
        "cmyk.jpg",
        "402c034e81d42f15184fcda802a4b62d1082bbb76b5b4c829b9b9e33fe0d5834",
        "31a26084c43deedd9397bf2eb2b22e1069e969f4686d131e8260a7e0324ecf4b",
    ),
    (
        "gray.jpg",
        "e2056daeebe0d5f6b8e0d1ac7078e2a7cd7ea9749d585927adc2b113e60b259e",
        "5caef1463639e82b0e3edbc74ab9184ef24556d65cbd384b5d51fd68a55904fc",
    ),
    (
        "gray1.png",
        "9bcf5b823cd79a61afa46ab23abc2dcafec91c5a9764b190f9c94227c3866f5e",
        "0b4edd86f977656ce8b260473a58512678fd071112a75c42fb42fe57fa424ab4",
    ),
    (
        "gray16.png",
        "50caa18f77f368ba6b2118de5d7d6188e12e111de34fd4183f233f2083d36866",
        "af89ce278a6d5884fe577448989140129669b3a5d6e36c9ee07ffd92c05cf416",
    ),
    (
        "gray2.png",
        "20fb3c5ab5751525009a32d8bc1d82e74e1c83ac7a93c86ce59258568a34523f",
        "3fa70c4a2289395e651ff046aee74e270312c98a73f007e8e606a520bc873450",
    ),
    (
        "gray4.png",
        "96a3184c30d0d6b7dbdfa14f39f954a1fd06ff3945864082c37bac46dadb38a3",
        "cf327474c651c5fd808957fa612497529af0747ebb8525244182720617e08ff9",
    ),
    (
        "gray8_trns.png",
        "fc86725a4b7864376a97c6384194662856867cf1eb57fd35db4eca3eabe9e66a",
        "44271e0bdd9163d5afcffbb0d19cfa713f3c2a583e653ff3e93f9352bc882275",
    ),
    (
        "la16.png",
        "5ff31d8138970c8cd8899419bf92455fc383fd1920a9606da50400197d57ea40",
        "d49b74b7a6ed5c09a34a103b0e6671762f0576956ff01dc2c03f6573fa1d89f2",
    ),
    (
        "p4_short_palette.png",
        "94fcf2c6d9d8c9d4ef513b0955424bdfaf8523d2a72261a6d4ed2766aea2da8a",
        "af9bea22f0802996e9a59aa3291b8503bdfe2f38c79b7bbcd15f4bb717d79c0b",
    ),
    (
        "p8_trns.png",
        "bac0c72f99372019bb3de1fdc54c8f04bec679629f363a672480d9cc9f5ac4d2",
        "06612bd67516877f540133f10120fd8ab64234a854e3a9ad2b7529c531f8d827",
    ),
    (
        "q70_420_restart.jpg",
        "08dd5d995c37623b371ab3d74cc7e5f90d39faab3ddf3e2da893d32b8052cfc7",
        "0e163d8e48798610ad62ffaa16058e334ef59021019bdbf729d5409f1daeee0e",
    ),
    (
        "q85_420.jpg",
        "a5dd7c12d057110d1b6c128d678cf0f2368cc75097daa9a07ca1af63578884fa",
        "7e3339d88a92e0463562e7eae031bde59a26a15ac1cd6f3329c5f2cfb20e0368",
    ),
    (
        "q85_422.jpg",
        "c3983c82d43f8385e9367ad2fcbbe71c61004896f8d08c0126fba9f5023d9d80",
        "e70caa1f6cfccdf9df0fca75dc8a0f7a0d561ce9853c2ba8ec2051eddf85f4cb",
    ),
    (
        "q85_444_progressive.jpg",
        "05f0c88e36287e46f8a925d020969392670059115ba36e0e85591b15b259c25a",
        "4d42854ab79aa65188d080ce868ed912760b1bc1f125a33500ea89cd295b25b1",
    ),
    (
        "rgb16.png",
        "5f35e2eade35f150508e0aa692a934075943272e08c651ac48ad6f546f1bba21",
        "a0a5fc29be5974fb94a758e922206117c958c3124aeb6585c99dca8a67597498",
    ),
    (
        "rgba16.png",
        "8c6650b7b64492fd4540dca54b9a95701dcfa1f4fe8f478e5bf43ef6344bb17a",
        "3279366cebd45edb9d79413e6bba1dec4f0c49e4b07e05eec2e9213e97804dfd",
    ),
    (
        "rgba8.png",
        "b7cae8fef2e3aee2d4a8d11b4fb3615d64c194808fb71adbec0c0a27fc9ae4c9",
        "5dddd2a7cc39645650d2b862c87e30c69268afa03db7a4dd1dac09c8a5b86984",
    ),
];

fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/preprocess"
    ))
    .join(name)
}

#[test]
fn every_fixture_matches_pillow_and_clip_processor() {
    let spec = PreprocessSpec::default();
    let mut failures = Vec::new();
    for &(name, rgb_sha, pv_sha) in FIXTURES {
        let path = fixture(name);
        let rgb = decode_rgb(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((rgb.width, rgb.height), (37, 23), "{name}");
        if sha256_hex(&rgb.data) != rgb_sha {
            failures.push(format!("{name}: decoded RGB differs from Pillow"));
            continue;
        }
        let pv = pixel_values(&path, &spec).unwrap_or_else(|e| panic!("{e}"));
        let bytes: Vec<u8> = pv.iter().flat_map(|x| x.to_le_bytes()).collect();
        if sha256_hex(&bytes) != pv_sha {
            failures.push(format!(
                "{name}: pixel_values differ from CLIPImageProcessor"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn temp_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).expect("write temp file");
    p
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

#[test]
fn missing_file_is_an_io_error() {
    let err = decode_rgb(Path::new("/nonexistent/dir/image.jpg")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/dir/image.jpg"),
        "{err}"
    );
    let err = pixel_values(Path::new("/nonexistent/x.png"), &PreprocessSpec::default());
    assert!(matches!(err, Err(Error::Io { .. })));
}

#[test]
fn text_file_named_jpg_is_not_an_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = temp_file(&dir, "notes.jpg", b"this is not a picture\n");
    let err = decode_rgb(&p).unwrap_err();
    assert!(matches!(err, Error::UnknownFormat { .. }), "{err:?}");
    let empty = temp_file(&dir, "empty.png", b"");
    assert!(matches!(
        decode_rgb(&empty),
        Err(Error::UnknownFormat { .. })
    ));
}

/// Pillow 10.3.0 raises "image file is truncated" for a JPEG missing even its final EOI
/// marker (checked: `Image.open(BytesIO(data[:-2])).convert('RGB')` on the fixtures), so
/// every cut must be an error, including ones inside the headers.
#[test]
fn truncated_jpegs_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in [
        "q85_420.jpg",
        "q85_444_progressive.jpg",
        "cmyk.jpg",
        "gray.jpg",
    ] {
        let data = read_fixture(name);
        let cuts = [2, 10, data.len() / 2, data.len() - 4, data.len() - 3];
        assert_cuts_fail(&dir, name, &data, &cuts);
    }
}

/// Each copy of `data` with its last `cut` bytes gone is a decode error.
fn assert_cuts_fail(dir: &tempfile::TempDir, name: &str, data: &[u8], cuts: &[usize]) {
    for &cut in cuts {
        let p = temp_file(dir, name, &data[..data.len() - cut]);
        let r = decode_rgb(&p);
        assert!(
            matches!(r, Err(Error::Decode { .. })),
            "{name} cut by {cut}: expected a decode error, got {r:?}"
        );
    }
}

#[test]
fn corrupt_jpeg_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut data = read_fixture("q85_420.jpg");
    // Garbage right after SOI: libjpeg's error_exit must come back as Err.
    for b in data.iter_mut().skip(3).take(40) {
        *b = 0x5A;
    }
    let p = temp_file(&dir, "corrupt.jpg", &data);
    let err = decode_rgb(&p).unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupt.jpg"), "{err}");
}

/// Pillow reads a PNG whose IEND chunk is cut (all image data present) but refuses one
/// cut inside IDAT (checked with Pillow 10.3.0 on these fixtures).
#[test]
fn truncated_pngs() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["rgba8.png", "gray16.png", "p8_trns.png"] {
        let data = read_fixture(name);
        let whole = decode_rgb(&fixture(name)).expect("whole file");
        let p = temp_file(&dir, name, &data[..data.len() - 10]);
        assert_eq!(decode_rgb(&p).expect("IEND cut is fine"), whole, "{name}");
        let cuts = [data.len() / 2, data.len() - 20, data.len() - 40];
        assert_cuts_fail(&dir, name, &data, &cuts);
    }
}

/// shortest_edge 300 < crop 336: transformers' `center_crop` zero-pads. Expected sha256 of
/// `pixel_values[0]` (shape (3, 336, 336)) from `python3 scripts/make_preprocess_fixtures.py`
/// (line `shortest_edge=300 q85_420.jpg`). With 301 transformers returns (3, 335, 336)
/// (odd gap), which `pixel_values` refuses with an error instead of a wrong-shaped tensor.
#[test]
fn smaller_than_crop_pads_like_transformers() {
    let spec = PreprocessSpec {
        shortest_edge: 300,
        ..PreprocessSpec::default()
    };
    let pv = pixel_values(&fixture("q85_420.jpg"), &spec).expect("padded crop");
    let bytes: Vec<u8> = pv.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(
        sha256_hex(&bytes),
        "d4c40b3ad64fc9d585b7b939867477f6ac341aece917c0e502abbc2c0cbe4001"
    );
    let odd = PreprocessSpec {
        shortest_edge: 301,
        ..PreprocessSpec::default()
    };
    let err = pixel_values(&fixture("q85_420.jpg"), &odd).unwrap_err();
    assert!(matches!(err, Error::Preprocess { .. }), "{err:?}");
}

/// A 2-pixel-wide, 20000-pixel-tall image resizes to 336 x 3 360 000; only the crop is
/// computed, so this is cheap. A constant image stays constant through Pillow's bicubic
/// (weights sum to 1), so every value is `(128/255 - mean) / std` of its channel.
#[test]
fn extreme_aspect_ratio_only_computes_the_crop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("needle.png");
    let file = std::fs::File::create(&path).expect("create");
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 2, 20_000);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().expect("header");
    w.write_image_data(&vec![128u8; 2 * 20_000]).expect("data");
    w.finish().expect("finish");
    let spec = PreprocessSpec::default();
    let pv = pixel_values(&path, &spec).expect("pixel_values");
    assert_eq!(pv.len(), 3 * 336 * 336);
    for (c, plane) in pv.chunks_exact(336 * 336).enumerate() {
        let want = ((128.0 * spec.rescale_factor) as f32 - spec.image_mean[c]) / spec.image_std[c];
        assert!(plane.iter().all(|&v| v == want), "channel {c}");
    }
}

//! Pillow/transformers parity of `preprocess` on the 20 golden images.
//!
//! Expected values come from the reference stack itself, not from this crate:
//! - `GOLDEN`: printed by `python3 scripts/pillow_reference_hashes.py` (Pillow 10.3.0,
//!   numpy, transformers 4.37.2): size and sha256 of `Image.open(p).convert('RGB')`
//!   (HWC bytes), the resize target and sha256 of the resized + center-cropped uint8
//!   image (HWC), and sha256 of `CLIPImageProcessor.preprocess(...)["pixel_values"][0]`
//!   as little-endian float32 CHW.
//! - `tests/data/golden-dev/reference/tensors/unsafes_0K_pixel_values.npy`: the golden
//!   bundle's own tensors, written by the original LLaVA code path (README of the bundle).
//!
//! The golden images are the bundle's `data/test/`, carried as the repo's `data/mini/test`.

use std::path::{Path, PathBuf};

use vlguard_ort::export::manifest::PreprocessSpec;
use vlguard_ort::preprocess::{
    decode_rgb, normalize_chw, pixel_values, pixel_values_batch, resize_and_crop,
    resize_output_size,
};
use vlguard_ort::util::sha256_hex;

#[path = "common/test_data.rs"]
mod test_data;
use test_data::repo_file;

struct Golden {
    image: &'static str,
    size: (usize, usize),
    rgb_sha256: &'static str,
    resized: (usize, usize),
    crop_sha256: &'static str,
    pixel_values_sha256: &'static str,
}

/// From `python3 scripts/pillow_reference_hashes.py` (see the module docs).
const GOLDEN: &[Golden] = &[
    Golden {
        image: "privacyAlert/brick_interlaced_00.png",
        size: (512, 512),
        rgb_sha256: "3501e216fb0968c378803347d3a13e3cc04021eaecc44b64c6528088c7ea0f64",
        resized: (336, 336),
        crop_sha256: "367d3e250b5025b92b568e451ca4ec301b425e5ed1905a9abe69e1ff688e0beb",
        pixel_values_sha256: "bc38f4fc4049e601183f07b9121074dcd0821c68464ed4dfb7c9dd1d5c5e1d80",
    },
    Golden {
        image: "HOD/colorwheel_p_01.png",
        size: (371, 370),
        rgb_sha256: "a5ca00619118b1c1a8b541a284ba14f5007945db9b39715e429d97600d404738",
        resized: (336, 336),
        crop_sha256: "bc0a1d6bfc47abfc37f2050376fa01534005e68415df53a2755d3e9bfa6284c7",
        pixel_values_sha256: "5fc229611257226c3a50f898e80ae44aa6cde1a6f0ff6f888a3b3095f9b72405",
    },
    Golden {
        image: "bad_ads/coffee_tall_02.jpg",
        size: (120, 900),
        rgb_sha256: "df8e9c8937ea5a5e2403b5a469cbc3d7b768a4be18c824057570113cb112d4a4",
        resized: (336, 2520),
        crop_sha256: "d959922d5e954e778bf698410bf21ef313c1f8126561f17b317d460f1d891da5",
        pixel_values_sha256: "8b9b802c54813fe0767d085a2f04c8a5c6e8e9855ac67b746c67461cbd31c487",
    },
    Golden {
        image: "HOD/hubble_q60_03.jpg",
        size: (1000, 872),
        rgb_sha256: "c3420e6d114b9062afde5f65bc34338d2a7a79c3b11df167d601bdea44972f21",
        resized: (385, 336),
        crop_sha256: "922e99bbe766143a46437ad51acf81c7446cc1a88f623dc4b8771878a3f3a372",
        pixel_values_sha256: "0df03083230ed12de503c6a5a72eb8628353616886a0f3c24af3b4da8540a205",
    },
    Golden {
        image: "bad_ads/immuno_cmyk_04.jpg",
        size: (512, 512),
        rgb_sha256: "0eeeedb16d58c9d17c98933729d2d86b966b0fe640cf682a6ed2d99c2781f1f1",
        resized: (336, 336),
        crop_sha256: "038f7587fc40fd1040af89f1bb11979293df934a1eade92f0cb67ec750d24d98",
        pixel_values_sha256: "a694415fde606dcf853579211c230083ad57c3621660c5a95b3b9b399c4bcbd6",
    },
    Golden {
        image: "bad_ads/camera_gray_05.jpg",
        size: (512, 512),
        rgb_sha256: "8320641cf2bc2c6daf7abdd3d149e3e1191a6cb86875e2bc98c26b1224dd962e",
        resized: (336, 336),
        crop_sha256: "60a8fbc5a64a2e32176cd5d87d37b7976f9dcd451fc585cd095ea733720fa502",
        pixel_values_sha256: "57827139ebdd3a67fa4fdddb2532b99359c8bb420d66457ebbf467f008cc7ca6",
    },
    Golden {
        image: "HOD/moto_wide_06.jpg",
        size: (1400, 300),
        rgb_sha256: "841fa52d2d1a87ad8e2979604c50631c28decea8db00e0f31355268380020d44",
        resized: (1568, 336),
        crop_sha256: "ca66e90937f5c0f3112200d5c279f4c7134fe4b84690873c69de8dc76b229a98",
        pixel_values_sha256: "88590d2d976866b2ec0e96670c825d9320c21bc43cde37541b77bac0e6151af3",
    },
    Golden {
        image: "privacyAlert/page_gray_07.png",
        size: (384, 191),
        rgb_sha256: "ec733fa2c40866580dddaeba150133b831d35bc25bef98e24b7b8ce2557ed37a",
        resized: (675, 336),
        crop_sha256: "1e2518925f29a852a4b613aa85a79b59245dc9643f694417881177b69a20d266",
        pixel_values_sha256: "6705f3ddc42dbfc9c9bc92445ed5f75f06ffa414407fd6b2ebe382ae9a0b5b3e",
    },
    Golden {
        image: "hatefulMemes/chelsea_tiny_08.jpg",
        size: (45, 30),
        rgb_sha256: "76bc32f9d9b0132427bce93bb6201ed2e750bd2ab9447c883810c4721a8220ce",
        resized: (504, 336),
        crop_sha256: "c3b17ad90dd2c19a7f0a2b238b3307f8ac33e5cec5bb17814311cbe91a3c87a0",
        pixel_values_sha256: "3125ffeea41c3fccb825ee0a2716bb40079d2a9040ef00de32f8186b42291deb",
    },
    Golden {
        image: "bad_ads/astronaut_exif6_09.jpg",
        size: (400, 300),
        rgb_sha256: "b3ea69dc6023061c31bfb9f21eb1b027b013c0395d311c58404c3bf0683c0728",
        resized: (448, 336),
        crop_sha256: "d105cb93f20427230da28363a75874deb8ca48dce10ea78d5ea5644742c28d30",
        pixel_values_sha256: "89b6efd0cedd501666daebdbaa1477be41a6c43434fa0d58523e8cb327bee9ac",
    },
    Golden {
        image: "HOD/astronaut_odd_10.png",
        size: (337, 501),
        rgb_sha256: "1b28e418bb2a27e30750bcebe5fe2f54dafb5498b5fb39d700f614584e33a6f1",
        resized: (336, 499),
        crop_sha256: "5d897734855f6334dd78ef7bffd1f836054a4be884b5ad8376f1aa0450ccceff",
        pixel_values_sha256: "3719d7259ece2d2de7b007eec46acdb66e29fdeca621e26c5d8a7bc9643fc162",
    },
    Golden {
        image: "privacyAlert/moon_small_11.png",
        size: (336, 336),
        rgb_sha256: "e8e0f64c477d5757450029945001ee92e4fc7557309d7b41326adf6b17fa298d",
        resized: (336, 336),
        crop_sha256: "e8e0f64c477d5757450029945001ee92e4fc7557309d7b41326adf6b17fa298d",
        pixel_values_sha256: "7ad215d0a58b3366d2116ab0d9b7e40d7ee078d2c0f3d78836e36ea3af97e632",
    },
    Golden {
        image: "bad_ads/retina_big_12.jpg",
        size: (1411, 1411),
        rgb_sha256: "c6244cc7e5227f65ef3a3e3702965afa736b65f022882eee6e879ade7a28c78c",
        resized: (336, 336),
        crop_sha256: "ba8adadeb0c17348a393932e2ab8a913592a631d65e3d48b10dbbfd58211ee05",
        pixel_values_sha256: "1c61c29ec0ce077b87c2e04a3091f1f7a03c47d38dfe8006bf4b3ce89bf19fa4",
    },
    Golden {
        image: "hatefulMemes/logo_rgba_13.png",
        size: (500, 500),
        rgb_sha256: "17be4850288aa25b79790e4508165da432585627d4bd46d7992ab1d6496f43df",
        resized: (336, 336),
        crop_sha256: "54100cdb4cb1d59690a76cd92bb1f8f3752d148f25b2b6abe8b0d56d5f1d92a5",
        pixel_values_sha256: "c37548517a449f284fbc4bdaf480b5a86fe7511113a6b212ba27a938cbdd5ea4",
    },
    Golden {
        image: "privacyAlert/horse_p_trns_14.png",
        size: (400, 328),
        rgb_sha256: "110388bf6d593dbfbccd3b247d0d410cb1c9f268763e190bf12d35ade6f68570",
        resized: (409, 336),
        crop_sha256: "354f1e7415d60088a229986dab438e4e848c1d8b3ef915112d333405a5ae491b",
        pixel_values_sha256: "79dc9abe2a574dc973ad2be9eb683a173246b007030a80402992b349c996e52e",
    },
    Golden {
        image: "privacyAlert/text_la_15.png",
        size: (448, 172),
        rgb_sha256: "36c90cb1af9203254329824cd648ef884675e529f5b3fa0f8b583ccc751e7339",
        resized: (875, 336),
        crop_sha256: "89c8a2fb094ecdcbabdfaef5c601207524d775a2f0883441ddd9d4991baf7394",
        pixel_values_sha256: "6783175d4104df8e11e57fc2936ed4746753bf8a34a6b637d08e2354492eaab8",
    },
    Golden {
        image: "harm-p/chelsea_q75_444_16.jpg",
        size: (451, 300),
        rgb_sha256: "45d8c13083d427ef30bd1755da479cd0d6a397297b2e5f031250d18842c09059",
        resized: (505, 336),
        crop_sha256: "4add3518393fb4ebace80be406ac77905d63557fa077e2430c5336c142e21e44",
        pixel_values_sha256: "b546550919a6520490ca5d4aace5bcda013dddf672c9efac2fa1535d56dc2a8b",
    },
    Golden {
        image: "privacyAlert/coffee_progressive_17.jpg",
        size: (600, 400),
        rgb_sha256: "fb8e4bc0c8769a55f2af8dcd5bfd235eba0b4064ca18076cfca4d682c5fb5046",
        resized: (504, 336),
        crop_sha256: "453792128b9af14261d167ae85c1af50db3eba896ff11162e627da0ae47ccf6c",
        pixel_values_sha256: "188f9ab351a59fa14161fa1ab4888479109dfc15cecae3b83cff46b77a284fea",
    },
    Golden {
        image: "harm-p/astronaut_q90_18.jpg",
        size: (512, 512),
        rgb_sha256: "d37dddd42572eda274e4d1c52cbee1b6a2abb061121242410d98869236e9babb",
        resized: (336, 336),
        crop_sha256: "bf5f6bd87a984314fa5f7def6e65500b09648dd7e737c97be8e5875565935bdb",
        pixel_values_sha256: "dbfaf30a3da86150f38cb779fffa072ae14099a67ff247973dfa91c6522dcb1b",
    },
    Golden {
        image: "hatefulMemes/rocket_orig_19.jpg",
        size: (640, 427),
        rgb_sha256: "3d4435cc745752b7f9724df88c6e18817de3ce7e3d2d71c55f85f7831e68f197",
        resized: (503, 336),
        crop_sha256: "1448fdc2fdee1f11ccb922a41c0d5a7a25bbfb60bc9dd0494cf4e6a85206c5f6",
        pixel_values_sha256: "4909a3777b50c75605a8cb2089fdd0d5bea5c84659b888da99ce338f6d347020",
    },
];

/// The golden bundle's reference outputs (its `reference/` folder).
fn golden_dir() -> PathBuf {
    repo_file("tests/data/golden-dev")
}

/// The golden bundle's images (its `data/test/`).
fn images_dir() -> PathBuf {
    repo_file("data/mini/test")
}

fn image_path(rel: &str) -> PathBuf {
    images_dir().join(rel)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Minimal `.npy` reader for a little-endian float32 C-order array.
fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not .npy", path.display());
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("npy header");
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape");
    let shape: Vec<usize> = shape_txt
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, data)
}

/// The golden bundle's `pixel_values` tensors of the first four unsafes samples are
/// reproduced with max abs diff 0.0 (bit-identical).
#[test]
fn golden_pixel_values_tensors_are_bit_identical() {
    let dir = golden_dir();
    let jsonl = std::fs::read_to_string(dir.join("reference/generations.jsonl"))
        .expect("generations.jsonl");
    let images: Vec<String> = jsonl
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("jsonl line"))
        .filter(|v| v["subset"] == "unsafes")
        .take(4)
        .map(|v| v["image"].as_str().expect("image field").to_string())
        .collect();
    assert_eq!(images.len(), 4);
    let spec = PreprocessSpec::default();
    for (k, image) in images.iter().enumerate() {
        let (shape, expected) =
            read_npy_f32(&dir.join(format!("reference/tensors/unsafes_{k:02}_pixel_values.npy")));
        assert_eq!(shape, vec![3, 336, 336]);
        let got = pixel_values(&image_path(image), &spec).expect("pixel_values");
        assert_eq!(got.len(), expected.len());
        let max_abs = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let identical = got
            .iter()
            .zip(&expected)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        eprintln!("unsafes_{k:02} {image}: max abs diff {max_abs}");
        assert!(
            identical,
            "{image}: not bit-identical (max abs diff {max_abs})"
        );
    }
}

/// Every stage of every golden image matches Pillow / transformers byte for byte.
#[test]
fn golden_images_match_pillow_at_every_stage() {
    let spec = PreprocessSpec::default();
    let mut failures = Vec::new();
    for g in GOLDEN {
        let path = image_path(g.image);
        let rgb = decode_rgb(&path).unwrap_or_else(|e| panic!("{e}"));
        if (rgb.width, rgb.height) != g.size || sha256_hex(&rgb.data) != g.rgb_sha256 {
            failures.push(format!("{}: decoded RGB differs from Pillow", g.image));
            continue;
        }
        assert_eq!(
            resize_output_size(rgb.width, rgb.height, spec.shortest_edge),
            g.resized,
            "{}",
            g.image
        );
        let crop = resize_and_crop(&rgb, &spec).expect("resize_and_crop");
        if sha256_hex(&crop.data) != g.crop_sha256 {
            failures.push(format!(
                "{}: resized/cropped bytes differ from Pillow",
                g.image
            ));
            continue;
        }
        if sha256_hex(&f32_bytes(&normalize_chw(&crop, &spec))) != g.pixel_values_sha256 {
            failures.push(format!(
                "{}: pixel_values differ from CLIPImageProcessor",
                g.image
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The batch API keeps input order and equals the one-at-a-time results.
#[test]
fn batch_keeps_order_and_matches_single() {
    let spec = PreprocessSpec::default();
    // Five images (JPEG and PNG kinds) keep the debug-build test fast.
    let picked: Vec<&Golden> = GOLDEN.iter().step_by(4).collect();
    let mut paths: Vec<PathBuf> = picked.iter().map(|g| image_path(g.image)).collect();
    paths.insert(3, images_dir().join("no_such_image.jpg"));
    let batch = pixel_values_batch(&paths, &spec);
    assert_eq!(batch.len(), paths.len());
    assert!(
        batch[3].is_err(),
        "missing file must be an Err in its own slot"
    );
    let mut k = 0;
    for (i, r) in batch.iter().enumerate() {
        if i == 3 {
            continue;
        }
        let got = r.as_ref().expect("golden image preprocesses");
        assert_eq!(
            sha256_hex(&f32_bytes(got)),
            picked[k].pixel_values_sha256,
            "{}",
            picked[k].image
        );
        k += 1;
    }
}

//! The export's checks before anything is written: the output apart from every input and
//! free to write, the configs' dimensions within bounds and consistent with each other,
//! and room on the disk for the weights.
//!
//! Each returns the `ExportError` naming the flag, file or field to change; none writes.

use std::path::{Path, PathBuf};

use crate::error::{io_err, ExportError};
use crate::graphs;
use crate::layout::Source;
use crate::limits;
use crate::manifest::{Dtype, Flavour};
use crate::pipeline::ExportOptions;

/// The checks between configs: tower width = projector input, a selectable layer, a head
/// size the fused decoder takes. Returns the number of vision layers to emit.
pub(super) fn check_dims(src: &Source, flavour: Flavour) -> Result<usize, ExportError> {
    let (llava, clip) = (&src.llava, &src.clip);
    check_bounds(src)?;
    if llava.mm_hidden_size != clip.hidden_size {
        return Err(ExportError::HiddenMismatch {
            llava: src.llava_config.clone(),
            clip: src.clip_config.clone(),
            mm_hidden: llava.mm_hidden_size,
            clip_hidden: clip.hidden_size,
        });
    }
    let emitted = graphs::layers_emitted(llava.select_layer, clip.num_layers).ok_or(
        ExportError::SelectLayer {
            path: src.llava_config.clone(),
            select: llava.select_layer,
            layers: clip.num_layers,
        },
    )?;
    if flavour == Flavour::Fused && llava.llama.head_dim % 16 != 0 {
        return Err(ExportError::FusedHeadDim {
            path: src.llava_config.clone(),
            head_dim: llava.llama.head_dim,
        });
    }
    Ok(emitted)
}

/// Every dimension of both configs within [`limits`], before anything is allocated or
/// written.
fn check_bounds(src: &Source) -> Result<(), ExportError> {
    use limits::*;
    let (l, c) = (&src.llava.llama, &src.clip);
    let llava = [
        ("hidden_size", l.hidden_size, MAX_HIDDEN),
        ("num_hidden_layers", l.num_layers, MAX_LAYERS),
        ("num_attention_heads", l.num_heads, MAX_HEADS),
        ("num_key_value_heads", l.num_kv_heads, MAX_HEADS),
        ("head_dim", l.head_dim, MAX_HIDDEN),
        ("intermediate_size", l.intermediate_size, MAX_INTERMEDIATE),
        ("vocab_size", l.vocab_size, MAX_VOCAB),
        (
            "max_position_embeddings",
            l.max_position_embeddings,
            MAX_CONTEXT,
        ),
        ("mm_hidden_size", src.llava.mm_hidden_size, MAX_HIDDEN),
    ];
    let clip = [
        ("hidden_size", c.hidden_size, MAX_HIDDEN),
        ("intermediate_size", c.intermediate_size, MAX_INTERMEDIATE),
        ("num_hidden_layers", c.num_layers, MAX_LAYERS),
        ("num_attention_heads", c.num_heads, MAX_HEADS),
        ("image_size", c.image_size, MAX_IMAGE_SIDE),
        ("patch_size", c.patch_size, MAX_IMAGE_SIDE),
    ];
    for (path, fields) in [
        (&src.llava_config, &llava[..]),
        (&src.clip_config, &clip[..]),
    ] {
        for &(field, value, max) in fields {
            limits::check(field, value, max).map_err(|(field, message)| ExportError::Bound {
                path: path.clone(),
                field,
                message,
            })?;
        }
    }
    Ok(())
}

/// The weight bytes the four graphs will hold at `dtype`: the free space an export needs
/// (graph structure and the tokenizer are small beside them).
pub(super) fn estimated_bytes(src: &Source, emitted: usize, dtype: Dtype) -> u64 {
    let (l, c) = (&src.llava.llama, &src.clip);
    let (h, hc) = (l.hidden_size as u64, c.hidden_size as u64);
    let kv = (l.num_kv_heads * l.head_dim) as u64;
    let patch = (c.num_channels * c.patch_size * c.patch_size) as u64;
    let vision = hc * patch
        + hc * (c.num_positions() as u64 + 1)
        + emitted as u64 * (4 * (hc * hc + hc) + 2 * hc * c.intermediate_size as u64 + 6 * hc);
    let projector = hc * h + h * h + 2 * h;
    let layer = 2 * h * h + 2 * h * kv + 3 * h * l.intermediate_size as u64 + 2 * h;
    let decoder = l.num_layers as u64 * layer + h + l.vocab_size as u64 * h;
    let embed = l.vocab_size as u64 * h;
    let per_value = match dtype {
        Dtype::Fp32 => 4,
        Dtype::Fp16 => 2,
    };
    (vision + projector + decoder + embed) * per_value
}

/// `Err` when the filesystem holding `dir` has less free space than `needed` bytes.
pub(super) fn check_space(dir: &Path, needed: u64) -> Result<(), ExportError> {
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| ExportError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    // SAFETY: a NUL-terminated path and a zeroed statvfs for the call to fill.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        // Not knowing is no reason to refuse: the write itself still fails cleanly.
        return Ok(());
    }
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    if free < needed {
        return Err(ExportError::NoSpace {
            dir: dir.to_path_buf(),
            needed,
            free,
        });
    }
    Ok(())
}

/// `out` must not be, contain or lie inside an input folder: with `--force` the staged
/// folder replaces `out` whole, so an `out` at or above the checkpoint deleted it (and
/// anything beside it). Compared as real paths (symlinks and `..` resolved).
pub(super) fn check_apart(opts: &ExportOptions) -> Result<(), ExportError> {
    let out = real_path(&opts.out);
    let inputs = [
        ("checkpoint", Some(&opts.checkpoint)),
        ("vision tower", opts.vision_tower.as_ref()),
        ("base checkpoint", opts.base.as_ref()),
    ];
    for (what, input) in inputs {
        let Some(input) = input else { continue };
        let real = real_path(input);
        let relation = if real == out {
            "is"
        } else if real.starts_with(&out) {
            "contains"
        } else if out.starts_with(&real) {
            "lies inside"
        } else {
            continue;
        };
        return Err(ExportError::OutOverlapsInput {
            out: opts.out.clone(),
            relation,
            what,
            input: input.clone(),
        });
    }
    Ok(())
}

/// `path` made absolute with symlinks resolved as far as it exists; the rest (not there
/// yet, so no links in it) appended with `.` and `..` applied.
fn real_path(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    let mut real = loop {
        if let Ok(real) = existing.canonicalize() {
            break real;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            // Nothing of it exists (not even `/`): compared as written.
            _ => return absolute,
        }
    };
    for name in rest.iter().rev() {
        match Path::new(name).components().next() {
            Some(Component::ParentDir) => {
                real.pop();
            }
            Some(Component::CurDir) | None => {}
            _ => real.push(name),
        }
    }
    real
}

/// `out` absent, an empty folder, or (with `force`) a folder to replace.
pub(super) fn check_out(out: &Path, force: bool) -> Result<(), ExportError> {
    match std::fs::metadata(out) {
        Err(_) => Ok(()),
        Ok(m) if !m.is_dir() => Err(ExportError::OutNotDir {
            out: out.to_path_buf(),
        }),
        Ok(_) => {
            let mut entries = std::fs::read_dir(out).map_err(io_err(out))?;
            if entries.next().is_some() && !force {
                Err(ExportError::OutNotEmpty {
                    out: out.to_path_buf(),
                })
            } else {
                Ok(())
            }
        }
    }
}

//! Safe unpacking of a downloaded zip into one target directory.
//!
//! Guarantees: every entry lands under the target (an entry with `..`, an absolute or
//! drive path, a backslash or a NUL, or a symlink refuses the WHOLE archive before anything
//! is written); the entry count, each entry's size and the total are bounded, and an entry
//! that inflates past its declared size is refused (a zip bomb cannot fill the disk); CRC
//! errors and truncated data are reported as a corrupt archive. Unpacking goes to a hidden
//! staging directory beside the target that is renamed into place only when every entry
//! was written, so a failure never leaves a half-unpacked tree. `__MACOSX/` resource-fork
//! entries are skipped. A single top-level directory named like the target (`test/` for a
//! target `.../test`) is stripped, so both `test/bad_ads/x.png` and `bad_ads/x.png` archives
//! give `target/bad_ads/x.png`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use super::{io_err, Error};

/// Bounds on what one archive may unpack to.
#[derive(Clone, Debug)]
pub struct UnzipLimits {
    pub max_entries: usize,
    pub max_entry_bytes: u64,
    pub max_total_bytes: u64,
}

impl Default for UnzipLimits {
    fn default() -> Self {
        // VLGuard's train.zip is a few GB with a few thousand images; these leave ample
        // room while still stopping a bomb long before a disk fills.
        UnzipLimits {
            max_entries: 1_000_000,
            max_entry_bytes: 4 << 30,
            max_total_bytes: 64 << 30,
        }
    }
}

/// What an unpack wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub files: usize,
    pub bytes: u64,
}

/// Checks that `name` is a plain relative path (`a/b/c`, optional trailing `/`) and returns
/// it as a path; the reason otherwise. Shared with the Hub's file list, which a hostile
/// mirror could fill with `../` names too.
pub(crate) fn safe_relative_path(name: &str) -> Result<PathBuf, &'static str> {
    if name.is_empty() {
        return Err("has an empty name");
    }
    if name.contains('\0') {
        return Err("contains a NUL byte");
    }
    if name.contains('\\') {
        return Err("contains a backslash (a Windows path separator)");
    }
    if name.starts_with('/') {
        return Err("is an absolute path");
    }
    let mut out = PathBuf::new();
    for part in name.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err("climbs out of the target with '..'"),
            p if p.len() >= 2 && p.as_bytes()[1] == b':' => {
                return Err("starts with a drive letter")
            }
            p => out.push(p),
        }
    }
    // Belt and braces: whatever the platform's parser sees must be plain names only.
    if out.as_os_str().is_empty() || !out.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("is not a plain relative path");
    }
    Ok(out)
}

struct Entry {
    index: usize,
    path: PathBuf,
    is_dir: bool,
    size: u64,
    name: String,
}

/// Removes the staging directory unless disarmed.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn corrupt(archive: &Path, message: impl Into<String>) -> Error {
    Error::CorruptArchive {
        archive: archive.to_path_buf(),
        message: message.into(),
    }
}

/// Unpacks `archive` into `target` (created or replaced as a whole), under `limits`.
pub fn unpack(archive: &Path, target: &Path, limits: &UnzipLimits) -> Result<Unpacked, Error> {
    let file = File::open(archive).map_err(io_err(archive))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| corrupt(archive, format!("not a readable zip: {e}")))?;
    // Pass 1: names, kinds and declared sizes only; refuse before writing anything.
    let entries = list_entries(&mut zip, archive, limits)?;
    let strip = target
        .file_name()
        .map(|n| format!("{}/", n.to_string_lossy()));
    let strip_top = strip.as_deref().filter(|prefix| {
        !entries.is_empty()
            && entries
                .iter()
                .all(|e| e.name.starts_with(prefix) || e.name == prefix[..prefix.len() - 1])
    });

    // Pass 2: write into a staging directory beside the target.
    let parent = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let base = target.file_name().map_or_else(
        || "unpacked".to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut staging = Staging {
        path: parent.join(format!(".{base}.unpacking-{}", std::process::id())),
        armed: true,
    };
    if staging.path.exists() {
        std::fs::remove_dir_all(&staging.path).map_err(io_err(&staging.path))?;
    }
    std::fs::create_dir_all(&staging.path).map_err(io_err(&staging.path))?;
    let mut written = Unpacked { files: 0, bytes: 0 };
    for e in &entries {
        let rel = match strip_top {
            Some(prefix) => match e.name.strip_prefix(prefix) {
                Some(rest) if !rest.is_empty() && rest != "/" => {
                    safe_relative_path(rest).map_err(|reason| Error::UnsafeArchive {
                        archive: archive.to_path_buf(),
                        entry: e.name.clone(),
                        reason: reason.to_string(),
                    })?
                }
                _ => continue, // the stripped top directory itself
            },
            None => e.path.clone(),
        };
        let out = staging.path.join(&rel);
        if e.is_dir {
            std::fs::create_dir_all(&out).map_err(io_err(&out))?;
            continue;
        }
        written.bytes += write_entry(&mut zip, archive, e, &out, written.bytes, limits)?;
        written.files += 1;
    }
    swap_into_place(&mut staging, target, parent, &base)?;
    Ok(written)
}

/// Every entry of `zip` with its safe relative path and declared size, checked against
/// `limits` (entry count, per-entry and total declared bytes); links, encrypted entries
/// and unsafe names are refused. macOS resource folders are left out.
fn list_entries<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    archive: &Path,
    limits: &UnzipLimits,
) -> Result<Vec<Entry>, Error> {
    if zip.len() > limits.max_entries {
        return Err(Error::ArchiveTooLarge {
            archive: archive.to_path_buf(),
            what: format!("{} entries", zip.len()),
            limit: format!("{} entries", limits.max_entries),
        });
    }
    let mut entries = Vec::with_capacity(zip.len());
    let mut declared_total: u64 = 0;
    for index in 0..zip.len() {
        let entry = zip
            .by_index_raw(index)
            .map_err(|e| corrupt(archive, format!("entry {index}: {e}")))?;
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let unsafe_entry = |reason: &str| Error::UnsafeArchive {
            archive: archive.to_path_buf(),
            entry: name.clone(),
            reason: reason.to_string(),
        };
        if entry.is_symlink() {
            return Err(unsafe_entry("is a symbolic link"));
        }
        let path = safe_relative_path(&name).map_err(unsafe_entry)?;
        if name.starts_with("__MACOSX/") {
            continue;
        }
        if entry.encrypted() {
            return Err(corrupt(archive, format!("entry {name:?} is encrypted")));
        }
        let size = entry.size();
        if size > limits.max_entry_bytes {
            return Err(Error::ArchiveTooLarge {
                archive: archive.to_path_buf(),
                what: format!("entry {name:?} ({size} bytes)"),
                limit: format!("{} bytes per entry", limits.max_entry_bytes),
            });
        }
        declared_total = declared_total.saturating_add(size);
        entries.push(Entry {
            index,
            path,
            is_dir: entry.is_dir(),
            size,
            name,
        });
    }
    if declared_total > limits.max_total_bytes {
        return Err(Error::ArchiveTooLarge {
            archive: archive.to_path_buf(),
            what: format!("{declared_total} bytes in all"),
            limit: format!("{} bytes", limits.max_total_bytes),
        });
    }
    Ok(entries)
}

/// Inflates entry `e` into the new file `out`, stopping as soon as it passes its declared
/// size or the archive passes `limits.max_total_bytes` (`before` bytes were written by the
/// entries before it). Returns the bytes written.
fn write_entry<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    archive: &Path,
    e: &Entry,
    out: &Path,
    before: u64,
    limits: &UnzipLimits,
) -> Result<u64, Error> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut reader = zip
        .by_index(e.index)
        .map_err(|err| corrupt(archive, format!("entry {:?}: {err}", e.name)))?;
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                corrupt(archive, format!("entry {:?} appears twice", e.name))
            } else {
                Error::Io {
                    path: out.to_path_buf(),
                    source,
                }
            }
        })?;
    let mut buf = vec![0u8; 1 << 16];
    let mut written: u64 = 0;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|err| corrupt(archive, format!("entry {:?}: {err}", e.name)))?;
        if n == 0 {
            break;
        }
        written += n as u64;
        if written > e.size || before + written > limits.max_total_bytes {
            return Err(Error::ArchiveTooLarge {
                archive: archive.to_path_buf(),
                what: format!(
                    "entry {:?} (inflates past its declared {} bytes)",
                    e.name, e.size
                ),
                limit: format!("{} bytes", e.size.min(limits.max_total_bytes)),
            });
        }
        writer.write_all(&buf[..n]).map_err(io_err(out))?;
    }
    if written != e.size {
        return Err(corrupt(
            archive,
            format!(
                "entry {:?} holds {written} bytes, {} declared",
                e.name, e.size
            ),
        ));
    }
    Ok(written)
}

/// Swaps the staged tree into `target`: the old tree aside, the new one in, the old one
/// removed (put back if the new one cannot be moved in).
fn swap_into_place(
    staging: &mut Staging,
    target: &Path,
    parent: &Path,
    base: &str,
) -> Result<(), Error> {
    let old = parent.join(format!(".{base}.old-{}", std::process::id()));
    let had_old = target.exists();
    if had_old {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        std::fs::rename(target, &old).map_err(io_err(target))?;
    }
    if let Err(source) = std::fs::rename(&staging.path, target) {
        if had_old {
            let _ = std::fs::rename(&old, target);
        }
        return Err(Error::Io {
            path: target.to_path_buf(),
            source,
        });
    }
    staging.armed = false;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::safe_relative_path;

    #[test]
    fn refuses_paths_that_leave_the_target() {
        for bad in [
            "../x",
            "a/../../x",
            "a/..",
            "/etc/passwd",
            "C:/x",
            "a\\..\\x",
            "",
            "./",
            "a\0b",
        ] {
            assert!(safe_relative_path(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            safe_relative_path("test/bad_ads/x.png").expect("plain path"),
            std::path::PathBuf::from("test/bad_ads/x.png")
        );
        assert_eq!(
            safe_relative_path("./dir/").expect("dir entry"),
            std::path::PathBuf::from("dir")
        );
    }
}

//! Reading files named by untrusted input (a manifest, test.json, a command line) without
//! hanging or reading forever: a FIFO blocks on open, `/dev/zero` never ends, a directory
//! is not data. [`regular_file`] checks what a path leads to (symlinks followed: what would
//! be opened is what is checked) before anything opens it; the readers here read no more
//! than the size it had then, so a file that grows meanwhile is not read without end.
//!
//! Also the one spelling of a digest: lowercase hex ([`hex`], [`sha256_hex`],
//! [`sha256_file`]), as every manifest, fingerprint, journal and download check writes it.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Component, Path};

use sha2::{Digest, Sha256};

/// The metadata of `path` when it leads to a regular file, else an `InvalidInput` error
/// saying what it is (`not a regular file (a FIFO)`).
pub fn regular_file(path: &Path) -> std::io::Result<Metadata> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(meta);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("not a regular file ({})", kind(&meta.file_type())),
    ))
}

/// What a path that is not a regular file is, in words.
pub fn kind(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match file_type {
        k if k.is_dir() => "a directory",
        k if k.is_fifo() => "a FIFO",
        k if k.is_char_device() => "a character device",
        k if k.is_block_device() => "a block device",
        k if k.is_socket() => "a socket",
        _ => "not a regular file",
    }
}

/// `path` opened for reading when it is a regular file, limited to the size it had when
/// checked.
pub fn open_regular(path: &Path) -> std::io::Result<std::io::Take<File>> {
    let meta = regular_file(path)?;
    Ok(File::open(path)?.take(meta.len()))
}

/// The whole of a regular file ([`std::fs::read`] for paths that may be anything).
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A digest in lowercase hex, two digits a byte (`hashlib`'s `hexdigest()`).
pub fn hex(digest: &[u8]) -> String {
    use std::fmt::Write;
    digest
        .iter()
        .fold(String::with_capacity(2 * digest.len()), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Lowercase hex sha256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex sha256 of a regular file, streamed (never a FIFO or a device: a symlink
/// to `/dev/zero` would be hashed forever).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = open_regular(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// Whether `name` is a plain file name: one normal component, no separator, not `.` or
/// `..` (a name a manifest gives for a file inside its own folder).
pub fn is_plain_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    // FIPS 180-2 appendix B.1 ("abc") and the empty message's well-known digest.
    #[test]
    fn digests_are_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, b"").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(sha256_file(dir.path()).is_err());
    }

    #[test]
    fn devices_fifos_and_folders_are_refused_unopened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        for (path, what) in [
            (Path::new("/dev/zero"), "a character device"),
            (fifo.as_path(), "a FIFO"),
            (dir.path(), "a directory"),
        ] {
            let err = read_regular(path).unwrap_err().to_string();
            assert_eq!(err, format!("not a regular file ({what})"));
        }
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(read_regular(&file).unwrap(), b"abc");
    }

    #[test]
    fn plain_names_only() {
        for name in ["a.onnx", "tokenizer.json", "x..y"] {
            assert!(is_plain_name(name), "{name}");
        }
        for name in ["", ".", "..", "../a", "/dev/zero", "a/b", "a/", "./a"] {
            assert!(!is_plain_name(name), "{name}");
        }
    }
}

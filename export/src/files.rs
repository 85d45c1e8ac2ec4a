//! Reading files named by untrusted input (a manifest, test.json, a command line) without
//! hanging or reading forever: a FIFO blocks on open, `/dev/zero` never ends, a directory
//! is not data. [`regular_file`] checks what a path leads to (symlinks followed: what would
//! be opened is what is checked) before anything opens it; the readers here read no more
//! than the size it had then, so a file that grows meanwhile is not read without end.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Component, Path};

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

//! Reading what someone else wrote, never more than a bound: plugin files and manifests in the
//! plugins folder, and the objects of a plugins bucket. Whoever can drop a file in the folder
//! or put an object in the bucket controls its size; without a bound a 10 GB file would be read
//! whole into the host's memory before anything looked at it.
//!
//! A file or object past its bound is refused from its stated size, before a byte is read; one
//! that grows while it is read is cut one byte past the bound and refused too. A file must be a
//! regular file: a FIFO would block its reader (and with it every later reload) until someone
//! wrote to it, and a device such as `/dev/zero` has no size to check. The refusal is an
//! [`std::io::Error`] of kind [`FileTooLarge`](std::io::ErrorKind::FileTooLarge) that names the
//! setting, so it reads as any other failed read: the plugin is not loaded, the version served
//! before keeps serving, and `natsplug list` says why.

use std::io::Read as _;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The largest manifest (`NAME.toml`) a host reads. A manifest is a few hundred bytes of TOML.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// A bound and the setting that sets it, for the refusal's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// At most this many bytes.
    pub bytes: u64,
    /// What sets it, as the operator writes it (`runtime.max_plugin_bytes`).
    pub setting: &'static str,
}

impl Bound {
    /// The manifest bound, [`MAX_MANIFEST_BYTES`].
    pub const MANIFEST: Self = Self {
        bytes: MAX_MANIFEST_BYTES,
        setting: "the manifest bound",
    };

    /// The plugin file bound, `runtime.max_plugin_bytes`.
    pub const fn plugin(bytes: u64) -> Self {
        Self {
            bytes,
            setting: "runtime.max_plugin_bytes",
        }
    }

    /// The refusal of `size` bytes.
    pub fn refuse(self, size: u64) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{size} bytes, over {} ({} bytes)", self.setting, self.bytes),
        )
    }

    /// Refuses `size` if it is past the bound.
    pub fn check(self, size: u64) -> std::io::Result<()> {
        if size > self.bytes {
            Err(self.refuse(size))
        } else {
            Ok(())
        }
    }
}

/// Reads the file at `path`, refusing it if it is past `bound` or not a regular file.
pub fn read(path: &Path, bound: Bound) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Without O_NONBLOCK, opening a FIFO waits for a writer; the file opened is the one checked.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, a device or a folder)",
        ));
    }
    let size = metadata.len();
    bound.check(size)?;
    let mut bytes = Vec::with_capacity(first_capacity(size));
    file.take(bound.bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    bound.check(bytes.len() as u64)?;
    Ok(bytes)
}

/// Reads the UTF-8 file at `path`, refusing it if it is past `bound`.
pub fn read_text(path: &Path, bound: Bound) -> std::io::Result<String> {
    String::from_utf8(read(path, bound)?).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error().to_string())
    })
}

/// [`read_text`], or none if the file is not there.
pub fn read_text_if_present(path: &Path, bound: Bound) -> std::io::Result<Option<String>> {
    match read_text(path, bound) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `reader` to its end, whose size is said to be `size`, refusing it if either the said
/// size or what it gives is past `bound`.
pub async fn read_async(
    reader: impl AsyncRead + Unpin,
    size: u64,
    bound: Bound,
) -> std::io::Result<Vec<u8>> {
    bound.check(size)?;
    let mut bytes = Vec::with_capacity(first_capacity(size));
    reader
        .take(bound.bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .await?;
    bound.check(bytes.len() as u64)?;
    Ok(bytes)
}

/// What to allocate before reading `size` bytes: the size, up to 16 MiB (a stated size may be
/// a lie, and a bound an operator set very high); the buffer grows past it as bytes come.
fn first_capacity(size: u64) -> usize {
    size.min(16 << 20) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: Bound = Bound {
        bytes: 10,
        setting: "test.bound",
    };

    #[test]
    fn a_file_at_the_bound_is_read_and_one_past_it_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 10]).unwrap();
        assert_eq!(read(&path, TEN).unwrap(), vec![7u8; 10]);
        std::fs::write(&path, [7u8; 11]).unwrap();
        let err = read(&path, TEN).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
        assert_eq!(err.to_string(), "11 bytes, over test.bound (10 bytes)");
        assert_eq!(
            read_text_if_present(&dir.path().join("missing"), TEN).unwrap(),
            None
        );
        std::fs::write(&path, [0xff]).unwrap();
        assert_eq!(
            read_text_if_present(&path, TEN).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_fifo_a_device_or_a_folder_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.wasm");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let zero = dir.path().join("zero.wasm");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let folder = dir.path().join("folder.wasm");
        std::fs::create_dir(&folder).unwrap();
        for path in [fifo, zero, folder] {
            // With no writer on the FIFO, a blocking open would never return.
            let err = read(&path, TEN).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{path:?}");
            assert_eq!(
                err.to_string(),
                "not a regular file (a FIFO, a device or a folder)"
            );
        }
    }

    #[tokio::test]
    async fn a_reader_that_gives_more_than_its_said_size_is_cut_past_the_bound() {
        // Said 4 bytes, gives a million: refused after reading 11.
        let mut source = std::io::Cursor::new(vec![1u8; 1_000_000]);
        let err = read_async(&mut source, 4, TEN).await.unwrap_err();
        assert_eq!(err.to_string(), "11 bytes, over test.bound (10 bytes)");
        assert_eq!(source.position(), 11);
        // Said a million: refused before reading anything.
        let mut source = std::io::Cursor::new(vec![1u8; 4]);
        let err = read_async(&mut source, 1_000_000, TEN).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
        assert_eq!(source.position(), 0);
        let mut source = std::io::Cursor::new(vec![1u8; 4]);
        assert_eq!(read_async(&mut source, 4, TEN).await.unwrap(), vec![1u8; 4]);
    }
}

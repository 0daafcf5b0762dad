//! Putting certificates and keys on disk without ever exposing a key. A file is created
//! with its final mode in the same `open(2)` that creates it (so a private key is never
//! readable by others, not even between create and chmod), written, and flushed to disk.
//! Replacing an existing file goes through a temporary sibling and `rename(2)`, so a
//! reader such as the agent, which re-reads its certificate when it changes, sees either
//! the old file or the new one and never half of either.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::PkiError;

/// Private keys: read and write for the owner only.
pub(crate) const PRIVATE_MODE: u32 = 0o600;
/// Certificates are public.
pub(crate) const PUBLIC_MODE: u32 = 0o644;

/// How many temporary names `replace` tries before giving up; a clash means a stale
/// temporary file from a crashed run, and more than a few of those is not bad luck.
const TEMP_ATTEMPTS: u32 = 16;

/// Creates `path` with `mode` and writes `contents`; fails with `PkiError::Exists` if
/// anything is already there. A failed write removes the half-written file.
pub(crate) fn create_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::Exists {
                path: path.to_owned(),
            },
            _ => io_error(path, source),
        })?;
    if let Err(source) = write_and_sync(file, contents) {
        let _ = std::fs::remove_file(path);
        return Err(io_error(path, source));
    }
    Ok(())
}

/// Writes `contents` to `path` with `mode`, replacing whatever is there in one rename.
/// Errors name `path`, not the temporary file.
pub(crate) fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let temp = create_temp_sibling(path, contents, mode)?;
    if let Err(source) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(path, source));
    }

    // The rename is durable only once the folder that holds the name is flushed too.
    let folder = parent_folder(path);
    File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| io_error(folder, source))
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|source| io_error(path, source))
}

/// The permission bits of `path` (the low 12 bits of st_mode).
pub(crate) fn mode(path: &Path) -> Result<u32, PkiError> {
    let meta = std::fs::metadata(path).map_err(|source| io_error(path, source))?;
    Ok(meta.permissions().mode() & 0o7777)
}

pub(crate) fn io_error(path: &Path, err: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_owned(),
        err,
    }
}

/// Creates and fills `.NAME.PID.N.tmp` next to `path`.
fn create_temp_sibling(path: &Path, contents: &[u8], mode: u32) -> Result<PathBuf, PkiError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);

    let name = path
        .file_name()
        .ok_or_else(|| io_error(path, std::io::ErrorKind::InvalidInput.into()))?;
    let folder = parent_folder(path);
    for _ in 0..TEMP_ATTEMPTS {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.{n}.tmp", std::process::id()));
        let temp = folder.join(temp_name);
        match create_new(&temp, contents, mode) {
            Ok(()) => return Ok(temp),
            Err(PkiError::Exists { .. }) => continue,
            Err(PkiError::Io { err, .. }) => return Err(io_error(path, err)),
            Err(other) => return Err(other),
        }
    }
    Err(io_error(path, std::io::ErrorKind::AlreadyExists.into()))
}

/// The folder `path` lives in; "." for a bare file name.
fn parent_folder(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn write_and_sync(mut file: File, contents: &[u8]) -> std::io::Result<()> {
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_new_sets_the_mode_and_refuses_an_existing_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret.key");

        create_new(&path, b"first", PRIVATE_MODE).expect("creating a new file");
        assert_eq!(
            mode(&path).expect("mode"),
            0o600,
            "a private file must be 0600"
        );

        let err = create_new(&path, b"second", PRIVATE_MODE).expect_err("overwrote a file");
        assert!(
            matches!(err, PkiError::Exists { .. }) && err.to_string().contains("secret.key"),
            "the error should name the existing file: {err}"
        );
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"first",
            "the old file is intact"
        );
    }

    #[test]
    fn replace_swaps_contents_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("alice.key");
        std::fs::write(&path, b"old").expect("seeding the old file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .expect("making the old file world-readable");

        replace(&path, b"new", PRIVATE_MODE).expect("replacing");

        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"new",
            "contents replaced"
        );
        assert_eq!(
            mode(&path).expect("mode"),
            0o600,
            "the new file has the new mode"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("listing")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            ["alice.key"],
            "only the target remains in the folder"
        );
    }

    #[test]
    fn replace_names_the_target_when_the_folder_is_missing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nope").join("alice.crt");
        let err = replace(&path, b"x", PUBLIC_MODE).expect_err("wrote into a missing folder");
        let msg = err.to_string();
        assert!(
            msg.contains("nope/alice.crt") && !msg.contains(".alice.crt."),
            "the error should name the target, not the temporary file: {msg}"
        );
    }
}

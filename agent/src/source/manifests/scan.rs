//! Which manifest files there are, with the metadata that tells a change
//! without reading them.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use tracing::debug;

use super::{Limits, SourceError};

/// What the watcher compares to notice a change without reading contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// An atomic replace (rename, ConfigMap symlink swap) changes the inode
    /// even when size and mtime happen to match.
    pub inode: u64,
    /// Why the file is not to be read (a size cap), if so.
    pub refused: Option<String>,
}

fn stamp(meta: &fs::Metadata) -> Stamp {
    Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
        refused: None,
    }
}

pub fn is_manifest_name(name: &str) -> bool {
    // Dotfiles are editor leftovers (".#x.yaml" lock links, swap files) and
    // a ConfigMap volume's "..data" internals: never manifests.
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError {
    let path = path.to_owned();
    move |source| SourceError::Read { path, source }
}

/// The directory to watch for `path`, and the one file of it that matters
/// when `path` is a file.
pub fn watched(path: &Path) -> (PathBuf, Option<PathBuf>) {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => (path.to_owned(), None),
        _ => (
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned(),
            Some(path.to_owned()),
        ),
    }
}

/// The manifest files of `path` with their metadata, in name order; the
/// files past the total size cap are marked refused.
pub fn scan(path: &Path, limits: Limits) -> Result<BTreeMap<PathBuf, Stamp>, SourceError> {
    let meta = fs::metadata(path).map_err(read_error(path))?;
    let mut files = BTreeMap::new();
    if !meta.is_dir() {
        files.insert(path.to_owned(), stamp(&meta));
    } else {
        for entry in fs::read_dir(path).map_err(read_error(path))? {
            let entry = entry.map_err(read_error(path))?;
            if !entry.file_name().to_str().is_some_and(is_manifest_name) {
                continue;
            }
            let file = entry.path();
            // fs::metadata follows symlinks, as ConfigMap volumes are made of
            // them. A dangling link or a subdirectory is not a manifest.
            match fs::metadata(&file) {
                Ok(meta) if meta.is_file() => {
                    files.insert(file, stamp(&meta));
                }
                Ok(_) => {}
                Err(e) => debug!(file = %file.display(), error = %e, "skipped"),
            }
        }
    }
    let mut total = 0u64;
    for s in files.values_mut() {
        if s.len > limits.file_bytes {
            s.refused = Some(format!(
                "{} bytes, over the {} byte limit: not read (its objects stay as they were)",
                s.len, limits.file_bytes
            ));
            continue;
        }
        total = total.saturating_add(s.len);
        if total > limits.total_bytes {
            s.refused = Some(format!(
                "the manifests add up to more than {} bytes: not read (its objects stay as they were)",
                limits.total_bytes
            ));
        }
    }
    Ok(files)
}

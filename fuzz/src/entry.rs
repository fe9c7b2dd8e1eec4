//! The calls the fuzz targets make into ferry, one function each: when the manifest reader or
//! the translation changes shape, re-point these functions and every target follows.

use std::{
    cell::RefCell,
    fs::File,
    io::{Seek as _, SeekFrom, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::PathBuf,
};

use ferry::{
    model::{Config, Desired, Diagnostic, Inputs, Objects},
    source::Loaded,
};

/// An in-memory file (memfd) per thread, so that the reader gets a real path to read without
/// the fuzzer touching the disk or leaving files behind.
struct MemFile {
    file: File,
    path: PathBuf,
}

impl MemFile {
    fn new() -> MemFile {
        // SAFETY: a NUL-terminated name and valid flags.
        let fd = unsafe { libc::memfd_create(c"ferry-fuzz-manifest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor we just opened and own.
        let file = unsafe { File::from_raw_fd(fd) };
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        MemFile { file, path }
    }

    fn set(&mut self, bytes: &[u8]) {
        self.file.set_len(0).expect("truncating the memfd");
        self.file
            .seek(SeekFrom::Start(0))
            .expect("seeking the memfd");
        self.file.write_all(bytes).expect("writing the memfd");
    }
}

thread_local! {
    static MANIFEST: RefCell<MemFile> = RefCell::new(MemFile::new());
}

/// What `ferry agent --manifests FILE` reads from one file holding `bytes` (YAML or JSON) on
/// node `node_name`: the reader, the file registry and the conversion to ferry's objects.
pub fn read_manifest(bytes: &[u8], node_name: &str) -> Loaded {
    MANIFEST.with(|m| {
        let mut m = m.borrow_mut();
        m.set(bytes);
        // Reading a memfd cannot fail: an error here is the harness's, not the input's.
        ferry::source::load(&m.path, node_name).expect("reading the in-memory manifest file")
    })
}

/// Kubernetes objects → ferry's objects, as the API source converts them, on `node_name`.
pub fn objects(inputs: &Inputs, node_name: &str) -> Objects {
    Objects::from_inputs(inputs, node_name)
}

/// ferry's objects → the frontends ferry programs, with the agent's settings `cfg`.
pub fn translate(objects: &Objects, cfg: &Config) -> (Desired, Vec<Diagnostic>) {
    ferry::model::translate_objects(objects, cfg)
}

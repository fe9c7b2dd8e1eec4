//! Documents not parsed again: for random histories of file edits (one
//! document changed, documents added, moved, duplicated within and across
//! files, broken, files removed), the registry fed with the known documents
//! skipped ends, after every step, with exactly the objects and diagnostics
//! a fresh read of the directory gives, where a file that fails to parse
//! stands for its last good content (a failed read keeps what it had).

use std::{collections::BTreeMap, fs};

use super::*;
use crate::model::{
    ServiceName,
    objects::{NodeObj, ObjKey, ServiceObj, SliceObj},
};

/// xorshift64*: small, deterministic, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A random document: a few names so that definitions collide, a few
/// shapes so that some carry diagnostics, rarely a YAML syntax error (the
/// whole file then keeps what it had).
fn doc(r: &mut Rng) -> String {
    let name = ["a", "b", "c"][r.below(3)];
    let ip = r.below(4);
    match r.below(12) {
        0..=4 => format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
             spec: {{clusterIP: 10.96.0.{ip}, ports: [{{port: {}}}]}}\n",
            80 + r.below(2)
        ),
        5..=7 => format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {}}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [10.0.0.{ip}]}}]\nports: [{{port: 8080}}]\n",
            ["a", "b", "c"][r.below(3)]
        ),
        8 => format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-{name}}}\n\
             status: {{addresses: [{{type: InternalIP, address: 192.168.0.{ip}}}]}}\n"
        ),
        9 => format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
             spec: {{clusterIP: 10.96.0.{ip}, ports: [{{port: 0}}]}}\n"
        ),
        10 => format!(
            "apiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: Service, \
             metadata: {{name: {name}}}, spec: {{clusterIP: 10.96.1.{ip}, ports: [{{port: 80}}]}}}}\n"
        ),
        _ if r.below(4) == 0 => "apiVersion: v1\nkind: Service\nmetadata: {name: [\n".to_owned(),
        _ => "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n".to_owned(),
    }
}

fn join(docs: &[String]) -> String {
    docs.iter()
        .map(|d| format!("---\n{d}"))
        .collect::<Vec<_>>()
        .concat()
}

/// What the events applied so far hold.
#[derive(Default)]
struct Applied {
    services: BTreeMap<ServiceName, ServiceObj>,
    slices: BTreeMap<ObjKey, SliceObj>,
    nodes: BTreeMap<String, NodeObj>,
    problems: BTreeMap<String, Vec<Diagnostic>>,
}

impl Applied {
    fn apply(&mut self, events: Vec<Event>) {
        for ev in events {
            match ev {
                Event::Service(Delta::Applied(s)) => {
                    self.services.insert(s.name.clone(), s);
                }
                Event::Service(Delta::Deleted(n)) => {
                    self.services.remove(&n);
                }
                Event::Slice(Delta::Applied(s)) => {
                    self.slices.insert(s.key.clone(), s);
                }
                Event::Slice(Delta::Deleted(k)) => {
                    self.slices.remove(&k);
                }
                Event::Node(Delta::Applied(n)) => {
                    self.nodes.insert(n.name.clone(), n);
                }
                Event::Node(Delta::Deleted(n)) => {
                    self.nodes.remove(&n);
                }
                Event::FileProblems { file, diags } => {
                    let name = Path::new(&file).file_name().unwrap().to_string_lossy();
                    self.problems.insert(name.into_owned(), diags);
                }
                _ => {}
            }
        }
    }
}

/// What the watcher does with one changed file: read it with its known
/// documents skipped, then whatever the registry wants read again whole.
fn reread(reg: &mut Registry, path: &Path, out: &mut Applied) -> usize {
    let stamps = scan(path, Limits::default()).unwrap();
    let known: Known = [(path.to_owned(), reg.known_docs(path))].into();
    let mut parsed = 0;
    for (p, read) in read_files(&stamps, &known, "node-a", Limits::default()) {
        if let Ok(docs) = &read {
            parsed += docs.iter().filter(|d| d.parsed.is_some()).count();
        }
        out.apply(reg.file_read(&p, read));
    }
    rereads(reg, out);
    parsed
}

/// The files the registry wants read again whole (as the watcher does,
/// skipping any gone since).
fn rereads(reg: &mut Registry, out: &mut Applied) {
    loop {
        let paths = reg.take_rereads();
        if paths.is_empty() {
            return;
        }
        for p in paths {
            let Ok(stamps) = scan(&p, Limits::default()) else {
                continue;
            };
            for (p, read) in read_files(&stamps, &Known::new(), "node-a", Limits::default()) {
                out.apply(reg.file_read(&p, read));
            }
        }
    }
}

/// A fresh registry's reading of `dir`.
fn fresh(dir: &Path) -> Applied {
    let mut reg = Registry::default();
    let mut out = Applied::default();
    let stamps = scan(dir, Limits::default()).unwrap();
    for (p, read) in read_files(&stamps, &Known::new(), "node-a", Limits::default()) {
        out.apply(reg.file_read(&p, read));
    }
    out
}

#[test]
fn skipping_known_documents_gives_what_a_fresh_read_gives() {
    const FILES: [&str; 3] = ["1.yaml", "2.yaml", "3.yaml"];
    let mut reparsed_docs = 0;
    let mut total_docs = 0;
    for seed in 1..=60u64 {
        let dir = std::env::temp_dir().join(format!(
            "ferry-manifest-cache-{}-{seed}",
            std::process::id()
        ));
        // The files as last read successfully.
        let good = dir.join("good");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&good).unwrap();
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut contents: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut reg = Registry::default();
        let mut applied = Applied::default();
        let mut broken: std::collections::BTreeSet<String> = Default::default();
        for step in 0..40 {
            // A broken file is the next one edited: while it is broken, the
            // registry cannot bring back an object of its last good content
            // that another file stops overriding (it holds no objects, and
            // the file cannot be read again): that object stays as applied.
            let file = match broken.iter().next() {
                Some(b) => FILES.iter().copied().find(|f| f == b).unwrap(),
                None => FILES[r.below(FILES.len())],
            };
            let path = dir.join(file);
            let docs = contents.entry(file).or_default();
            match r.below(10) {
                // The usual edit: one document of the file changed.
                0..=4 if !docs.is_empty() => {
                    let i = r.below(docs.len());
                    docs[i] = doc(&mut r);
                }
                5 if !docs.is_empty() => {
                    let i = r.below(docs.len());
                    docs.remove(i);
                }
                6 if docs.len() > 1 => {
                    let (i, j) = (r.below(docs.len()), r.below(docs.len()));
                    docs.swap(i, j);
                }
                7 => {
                    contents.remove(file);
                    if path.exists() {
                        fs::remove_file(&path).unwrap();
                        let _ = fs::remove_file(good.join(file));
                        broken.remove(file);
                        applied.apply(reg.file_gone(&path));
                        rereads(&mut reg, &mut applied);
                    }
                    continue;
                }
                _ => {
                    let at = r.below(docs.len() + 1);
                    docs.insert(at, doc(&mut r));
                }
            }
            let docs = &contents[file];
            let text = join(docs);
            fs::write(&path, &text).unwrap();
            if parse::parse(text.as_bytes(), "", "node-a").is_ok() {
                fs::write(good.join(file), &text).unwrap();
                broken.remove(file);
            } else {
                broken.insert(file.to_owned());
            }
            reparsed_docs += reread(&mut reg, &path, &mut applied);
            total_docs += docs.len();

            let want = fresh(&good);
            let at = format!("seed {seed} step {step}");
            assert_eq!(applied.services, want.services, "{at}: services");
            assert_eq!(applied.slices, want.slices, "{at}: slices");
            assert_eq!(applied.nodes, want.nodes, "{at}: nodes");
            for (file, diags) in &applied.problems {
                let want = want
                    .problems
                    .get(file)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let diags = if broken.contains(file) {
                    // Why it failed, then what its last good content gives.
                    assert_eq!(diags[0].kind, "manifest", "{at}: {file}: {diags:?}");
                    &diags[1..]
                } else {
                    diags.as_slice()
                };
                assert_eq!(diags, want, "{at}: diagnostics of {file}");
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }
    // The point of it: most documents of a changed file are not parsed.
    assert!(
        reparsed_docs * 2 < total_docs,
        "{reparsed_docs} of {total_docs} documents parsed"
    );
}

//! ferry's image (issue 13): `cargo xtask image` builds it with buildah from scratch, and it
//! holds the agent and the libraries it links, nothing else. These machines cannot run
//! containers (hybrid cgroups), so the image is checked as a filesystem: mounted, and its
//! entrypoint run chrooted into it (`ferry --version`, and `ferry preflight` in a lab's node
//! namespace with the host's /proc and /sys bound in a private mount namespace).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use ferry_tests::{Lab, proc, require_root};

/// buildah on the test's own storage (vfs: a mounted image is a plain directory).
fn buildah(storage: &Path, args: &[&str]) -> String {
    let out = Command::new("buildah")
        .arg("--root")
        .arg(storage.join("root"))
        .arg("--runroot")
        .arg(storage.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("buildah (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "buildah {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every file (not directory) under `root`, relative.
fn files(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn the_image_holds_the_agent_alone_and_its_entrypoint_runs() {
    require_root!();
    let lab = Lab::new("the_image_holds_the_agent_alone_and_its_entrypoint_runs");
    let storage = lab.tmp_dir().join("buildah");
    let ferry = Lab::ferry_bin();
    let xtask = proc::sibling_binary("xtask").expect("xtask is built with the workspace");
    let tag = format!("localhost/ferry-test:{}", lab.id());
    let out = Command::new(&xtask)
        .arg("image")
        .arg("--binary")
        .arg(&ferry)
        .args(["--tag", &tag])
        .arg("--storage")
        .arg(&storage)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo xtask image: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let config = buildah(
        &storage,
        &[
            "inspect",
            "--format",
            "{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}} {{.OCIv1.Config.User}}",
            &tag,
        ],
    );
    assert_eq!(config, "[/usr/local/bin/ferry] [agent] 0:0");
    let ctr = buildah(&storage, &["from", &tag]);
    let root = PathBuf::from(buildah(&storage, &["mount", &ctr]));

    // The agent and what ldd names for it: no shell, no package manager, no other file.
    let got = files(&root);
    assert!(got.contains("usr/local/bin/ferry"), "{got:?}");
    let others: Vec<&String> = got
        .iter()
        .filter(|f| *f != "usr/local/bin/ferry")
        .filter(|f| !(f.starts_with("lib") && f.contains(".so")))
        .collect();
    assert!(
        others.is_empty(),
        "files beside the agent and its libraries: {others:?}"
    );
    assert!(got.len() <= 8, "{got:?}");
    let size: u64 = got
        .iter()
        .map(|f| std::fs::metadata(root.join(f)).unwrap().len())
        .sum();
    let binary = std::fs::metadata(&ferry).unwrap().len();
    println!(
        "image: {} files, {} MB ({} MB of them the agent)",
        got.len(),
        size >> 20,
        binary >> 20
    );
    assert!(size - binary < 8 << 20, "libraries {} bytes", size - binary);

    // The entrypoint runs from the image's files alone.
    let version = Command::new("chroot")
        .arg(&root)
        .args(["/usr/local/bin/ferry", "--version"])
        .output()
        .unwrap();
    let want = Command::new(&ferry).arg("--version").output().unwrap();
    assert!(version.status.success(), "{version:?}");
    assert_eq!(version.stdout, want.stdout);

    // ferry preflight in a node namespace, the host's /proc and /sys bound in (privately).
    let script = format!(
        "mount --rbind /proc {r}/proc && mount --rbind /sys {r}/sys && \
         mount --bind {bpf} {r}/tmp && \
         exec chroot {r} /usr/local/bin/ferry preflight --bpffs /tmp/ferry --cgroup {cg} --no-api",
        r = root.display(),
        bpf = lab.bpffs().display(),
        cg = lab.cgroup().display()
    );
    let placed = proc::Placement {
        netns: Some(lab.node_netns_path()),
        cgroup: None,
    };
    let pre = proc::output_placed(
        Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]),
        &placed,
        Duration::from_secs(30),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&pre.stdout);
    println!("ferry preflight in the image:\n{text}");
    assert!(pre.status.success(), "{text}");
    for what in ["privilege", "btf", "bpffs", "cgroup2"] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(what))
            .unwrap_or_else(|| {
                panic!(
                    "no {what} line: {text}\n{}",
                    String::from_utf8_lossy(&pre.stderr)
                )
            });
        assert!(line.starts_with("ok"), "{line}");
    }
    assert!(
        text.contains("not checked: no iptables-save or nft here"),
        "the image has no iptables: {text}"
    );
    buildah(&storage, &["umount", &ctr]);
    buildah(&storage, &["rm", &ctr]);
    buildah(&storage, &["rmi", &tag]);
}

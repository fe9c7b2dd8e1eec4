//! `ferry preflight` (issue 13): one line per requirement, with the cause and the fix, and a
//! failing exit when one is not met. Run in a lab's node namespace against the lab's own bpffs
//! and cgroup, then against a directory that is no bpffs, and beside a running agent that holds
//! kube-proxy's health port (what a node still running kube-proxy looks like to ferry).

mod common;

use std::{path::Path, process::Output, time::Duration};

use common::*;
use ferry_tests::{Lab, netns, require_root};

fn preflight(lab: &Lab, bpffs: &Path, ports: [&str; 2]) -> (Output, String) {
    let bin = Lab::ferry_bin();
    let (bpffs, cgroup) = (bpffs.to_string_lossy(), lab.cgroup().to_string_lossy());
    let args = [
        "preflight",
        "--bpffs",
        &bpffs,
        "--cgroup",
        &cgroup,
        "--healthz-bind-address",
        ports[0],
        "--metrics-bind-address",
        ports[1],
        // The lab's agents read manifests: no API server to reach (tested below, with one).
        "--no-api",
    ];
    let out = netns::output(
        lab.node_netns(),
        &bin.to_string_lossy(),
        &args,
        Duration::from_secs(30),
    )
    .expect("running ferry preflight");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("ferry preflight --bpffs {bpffs}:\n{text}");
    (out, text)
}

/// `ferry ARGS` in the lab's node namespace (60 s at most).
fn ferry(lab: &Lab, args: &[&str]) -> Output {
    let bin = Lab::ferry_bin();
    netns::output(
        lab.node_netns(),
        &bin.to_string_lossy(),
        args,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("running ferry {args:?}: {e:#}"))
}

fn line<'a>(text: &'a str, what: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(what))
        .unwrap_or_else(|| panic!("no {what} line in:\n{text}"))
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn preflight_names_each_unmet_requirement_with_its_fix() {
    require_root!();
    let lab = Lab::new("preflight_names_each_unmet_requirement_with_its_fix");
    let ports = ["0.0.0.0:10256", "127.0.0.1:10249"];

    // The lab meets every requirement.
    let (out, text) = preflight(&lab, &lab.pin_dir(), ports);
    assert!(out.status.success(), "{text}");
    for what in ["privilege", "btf", "bpffs", "cgroup2", "port"] {
        assert!(line(&text, what).starts_with("ok "), "{what}:\n{text}");
    }
    assert!(
        text.lines().filter(|l| l.contains(" kernel ")).count() >= 3,
        "one line per kernel feature:\n{text}"
    );

    // A pin directory on no bpffs: the line says so and how to mount one; the exit fails.
    let plain = lab.tmp_dir().join("pins");
    let (out, text) = preflight(&lab, &plain, ports);
    assert!(!out.status.success(), "{text}");
    let bpffs = line(&text, "bpffs");
    assert!(
        bpffs.starts_with("FAIL") && bpffs.contains("not on a bpf filesystem"),
        "{bpffs}"
    );
    assert!(bpffs.contains("mount -t bpf"), "{bpffs}");

    // Something holds the health port (here a running agent, on a node kube-proxy itself).
    let (svc, slice) = simple("web", "10.96.0.10", 80, 8080, &[]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    start_agent(&lab);
    let (out, text) = preflight(&lab, &lab.pin_dir(), ports);
    assert!(!out.status.success(), "{text}");
    let port = text
        .lines()
        .find(|l| l.contains("0.0.0.0:10256"))
        .unwrap_or_else(|| panic!("no line for 10256:\n{text}"));
    assert!(
        port.starts_with("FAIL")
            && port.contains("in use")
            && port.contains("--healthz-bind-address"),
        "{port}"
    );
}

/// Migration: while another process (kube-proxy) holds the health port, the agent does not
/// exit: it programs the kernel, says why /healthz is not its own yet, and serves it once the
/// port is free (kube-proxy retries its own servers the same way).
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn the_agent_waits_for_a_port_kube_proxy_still_holds() {
    require_root!();
    let lab = Lab::new("the_agent_waits_for_a_port_kube_proxy_still_holds");
    let (svc, slice) = simple("web", "10.96.0.10", 80, 8080, &[]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    let hold = "import socket, sys\n\
                s = socket.socket()\n\
                s.bind(('0.0.0.0', 10256))\n\
                s.listen()\n\
                print('held', flush=True)\n\
                sys.stdin.readline()\n";
    let holder = lab.spawn_interactive(&lab.host(), "python3", &["-c", hold]);
    holder
        .wait_line(Duration::from_secs(10), |l| l == "held")
        .expect("the holder bound 10256");

    std::thread::scope(|s| {
        let agent = s.spawn(|| start_agent(&lab));
        // The agent runs and says why the port is not its own; only then is the port freed.
        let waited = std::time::Instant::now();
        while !lab.agent_log().contains("the port is in use") {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "no warning about the held port:\n{}",
                lab.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = lab.agent_log();
        assert!(log.contains("kube-proxy still running"), "{log}");
        holder.send_line("").expect("releasing the port");
        drop(holder);
        let took = agent.join().expect("the agent became ready");
        report("port freed -> agent ready", took);
    });
    let log = lab.agent_log();
    assert!(log.contains("healthz server listening"), "{log}");
    assert!(
        log.find("socket hook").unwrap() < log.find("healthz server listening").unwrap(),
        "the datapath did not wait for the port:\n{log}"
    );
}

/// kube-proxy's rules as its iptables mode leaves them (with kubelet's chains and a rule of
/// the operator's beside them), and its nftables mode's table.
const KUBE_PROXY_RULES: &str = "\
*filter
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:OPERATOR-CHAIN - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -s 10.1.0.0/16 -j OPERATOR-CHAIN
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-WEB - [0:0]
:KUBE-SEP-WEB1 - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SVC-WEB -j KUBE-SEP-WEB1
-A KUBE-SEP-WEB1 -p tcp -m tcp -j DNAT --to-destination 10.244.0.2:8080
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
";

/// `ferry cleanup --kube-proxy` removes what `kube-proxy --cleanup` would, and only that;
/// preflight says the rules are there before and gone after.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn kube_proxys_rules_are_found_and_removed_and_nothing_else() {
    require_root!();
    let lab = Lab::new("kube_proxys_rules_are_found_and_removed_and_nothing_else");
    let ns = lab.node_netns();
    let script = format!(
        "iptables-restore --noflush <<'EOF'\n{KUBE_PROXY_RULES}EOF\n\
         nft add table ip kube-proxy && nft add chain ip kube-proxy services"
    );
    netns::run(ns, "sh", &["-c", &script]).expect("installing kube-proxy's rules");
    let ports = ["0.0.0.0:10256", "127.0.0.1:10249"];

    let (_, text) = preflight(&lab, &lab.pin_dir(), ports);
    let rules = line(&text, "rules");
    assert!(rules.starts_with("warn"), "{rules}");
    assert!(
        rules.contains("chains in nat") && rules.contains("ip kube-proxy"),
        "{rules}"
    );
    assert!(rules.contains("ferry cleanup --kube-proxy"), "{rules}");

    let out = ferry(&lab, &["cleanup", "--kube-proxy"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("removed kube-proxy's rules"), "{log}");

    let save = netns::run(ns, "iptables-save", &[]).unwrap();
    for gone in [
        "KUBE-SERVICES",
        "KUBE-SVC-WEB",
        "KUBE-SEP-WEB1",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        "KUBE-FORWARD",
    ] {
        assert!(!save.contains(gone), "{gone} left:\n{save}");
    }
    for kept in [
        ":KUBE-FIREWALL",
        "-A INPUT -j KUBE-FIREWALL",
        "-A INPUT -s 10.1.0.0/16 -j OPERATOR-CHAIN",
    ] {
        assert!(save.contains(kept), "{kept} removed:\n{save}");
    }
    let tables = netns::run(ns, "nft", &["list", "tables"]).unwrap();
    assert!(!tables.contains("kube-proxy"), "{tables}");

    let (_, text) = preflight(&lab, &lab.pin_dir(), ports);
    assert!(line(&text, "rules").starts_with("ok"), "{text}");
    // Nothing left to do is not an error; nor is it through a host root (here the
    // machine's own: each tool runs chrooted there, as in a `kubectl debug node` pod).
    let again = ferry(&lab, &["cleanup", "--kube-proxy", "--host-root", "/"]);
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{log}");
    assert!(log.contains("no kube-proxy rules to remove"), "{log}");
    let nowhere = lab.tmp_dir().join("no-host");
    let bad = ferry(
        &lab,
        &[
            "cleanup",
            "--kube-proxy",
            "--host-root",
            &nowhere.to_string_lossy(),
        ],
    );
    let log = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && log.contains("no host root filesystem"),
        "{log}"
    );
}

/// `ferry mount-bpffs`, the init step of nodes without a bpffs (kind): mounts one (mode 0700)
/// where none is, and does nothing where one is. In a private mount namespace, so nothing of
/// it outlives the test.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn mount_bpffs_mounts_one_where_none_is_and_only_then() {
    require_root!();
    let lab = Lab::new("mount_bpffs_mounts_one_where_none_is_and_only_then");
    let dir = lab.tmp_dir().join("sys-fs-bpf");
    let bin = Lab::ferry_bin();
    let script = format!(
        "{b} mount-bpffs --path {d} && stat -f -c %T {d} && stat -c %a {d} && \
         {b} mount-bpffs --path {d} && grep -c ' {d} ' /proc/self/mountinfo",
        b = bin.display(),
        d = dir.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        // The kernel keeps the sticky bit of a bpffs root: mode=0700 reads back 1700.
        ["bpf_fs", "1700", "1"],
        "one bpffs, mode 0700, mounted once:\n{stderr}"
    );
    assert!(stderr.contains("mounted a bpf filesystem"), "{stderr}");
    assert!(stderr.contains("already a bpf filesystem"), "{stderr}");
}

/// Preflight asks the API server the agent would use for its version, and names the address
/// and where it came from when it does not answer.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn preflight_reaches_the_api_server_or_names_it() {
    require_root!();
    let lab = Lab::new("preflight_reaches_the_api_server_or_names_it");
    let api = ferry_tests::apiserver::ApiServer::start_in(
        Some(&lab.node_netns_path()),
        ferry_tests::apiserver::Options::default(),
    )
    .unwrap();
    let kubeconfig = lab.tmp_dir().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["preflight"];
        args.extend_from_slice(extra);
        let out = ferry(&lab, &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), line(&text, "api").to_owned())
    };
    let k = kubeconfig.to_string_lossy();
    let (_, ok) = run(&["--kubeconfig", &k]);
    assert!(ok.starts_with("ok") && ok.contains("Kubernetes v"), "{ok}");
    assert!(ok.contains(&format!("kubeconfig {k}")), "{ok}");

    // --master moves it to a port nobody listens on: a failure naming the fix.
    let (passed, bad) = run(&["--kubeconfig", &k, "--master", "https://127.0.0.1:9"]);
    assert!(!passed);
    assert!(
        bad.starts_with("FAIL") && bad.contains("FERRY_APISERVER"),
        "{bad}"
    );
}

/// kube-proxy's real layouts (as the bench generates them: iptables mode's full sync, and
/// nftables mode's table, for 50 Services of 4 endpoints), beside kubelet's chains and an
/// operator's rule: `ferry cleanup --kube-proxy` leaves none of kube-proxy's and all the rest.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn kube_proxys_real_layouts_are_removed_whole() {
    use ferry::cmd::kube_proxy_rules::is_kube_proxy_chain;
    use ferry_tests::bench::{kubeproxy, synth};
    require_root!();
    let lab = Lab::new("kube_proxys_real_layouts_are_removed_whole");
    let ns = lab.node_netns();
    let backends: Vec<std::net::Ipv4Addr> = (1..=4)
        .map(|i| std::net::Ipv4Addr::new(10, 244, 0, i))
        .collect();
    let svcs = synth::eastwest_set(50, &backends);
    let ipt = lab.tmp_dir().join("iptables.rules");
    std::fs::write(&ipt, kubeproxy::iptables_restore(&svcs)).unwrap();
    let nft = lab.tmp_dir().join("kube-proxy.nft");
    std::fs::write(&nft, kubeproxy::nft_script(&svcs, "10.244.0.1")).unwrap();
    let script = format!(
        "iptables-restore --noflush < {} && nft -f {} && \
         iptables -N KUBE-FIREWALL && iptables -A INPUT -j KUBE-FIREWALL && \
         iptables -N OPERATOR-CHAIN && iptables -A INPUT -s 10.1.0.0/16 -j OPERATOR-CHAIN",
        ipt.display(),
        nft.display()
    );
    netns::run(ns, "sh", &["-c", &script]).expect("loading kube-proxy's layouts");
    let chains = |save: &str| -> Vec<String> {
        save.lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| is_kube_proxy_chain(c))
            .map(str::to_owned)
            .collect()
    };
    let before = chains(&netns::run(ns, "iptables-save", &[]).unwrap());
    assert!(
        before.len() > 100,
        "the layout holds kube-proxy's chains: {}",
        before.len()
    );

    let out = ferry(&lab, &["cleanup", "--kube-proxy"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    println!("removed {} chains: {log}", before.len());
    let save = netns::run(ns, "iptables-save", &[]).unwrap();
    assert_eq!(chains(&save), Vec::<String>::new(), "{save}");
    assert!(
        !save.contains("-j KUBE-SERVICES") && !save.contains("KUBE-MARK-MASQ"),
        "{save}"
    );
    for kept in [
        ":KUBE-FIREWALL",
        "-A INPUT -j KUBE-FIREWALL",
        ":OPERATOR-CHAIN",
    ] {
        assert!(save.contains(kept), "{kept} removed:\n{save}");
    }
    let tables = netns::run(ns, "nft", &["list", "tables"]).unwrap();
    assert!(!tables.contains("kube-proxy"), "{tables}");
}

/// The failures preflight names that the lab cannot make for real: a cgroup v1 hierarchy (or
/// no cgroup at all) as --cgroup, and capabilities taken away (setpriv, in a child).
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn preflight_names_a_cgroup1_path_and_missing_capabilities() {
    require_root!();
    let lab = Lab::new("preflight_names_a_cgroup1_path_and_missing_capabilities");
    let bin = Lab::ferry_bin();
    let bpffs = lab.pin_dir();
    // A cgroup v1 controller's hierarchy where the host has one (hybrid hosts do), else a
    // directory that is no cgroup at all: either is no cgroup v2 directory.
    let v1 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup "))
        })
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .unwrap_or_else(|| lab.tmp_dir().to_string_lossy().into_owned());
    // `wrapper ... ferry preflight ...` (or ferry alone), in the node namespace.
    let run = |wrapper: &[&str], cgroup: &str| {
        let (bpf, bin) = (bpffs.to_string_lossy(), bin.to_string_lossy());
        let mut command: Vec<&str> = wrapper.to_vec();
        command.extend_from_slice(&[
            &bin as &str,
            "preflight",
            "--bpffs",
            &bpf,
            "--cgroup",
            cgroup,
            "--no-api",
        ]);
        let out = netns::output(
            lab.node_netns(),
            command[0],
            &command[1..],
            Duration::from_secs(30),
        )
        .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (passed, text) = run(&[], &v1);
    let line_cg = line(&text, "cgroup2");
    assert!(!passed, "{text}");
    assert!(
        line_cg.starts_with("FAIL") && line_cg.contains("not a cgroup v2 directory"),
        "{line_cg}"
    );
    assert!(line_cg.contains("--cgroup"), "{line_cg}");

    // Only CAP_NET_ADMIN left: CAP_BPF and CAP_PERFMON are named, and so is the fix.
    let cg = lab.cgroup().to_string_lossy().into_owned();
    let (passed, text) = run(
        &[
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-all,+net_admin",
        ],
        &cg,
    );
    let privilege = line(&text, "privilege");
    assert!(!passed, "{text}");
    assert!(
        privilege.starts_with("FAIL")
            && privilege.contains("CAP_BPF")
            && privilege.contains("CAP_PERFMON")
            && !privilege.contains("CAP_NET_ADMIN"),
        "{privilege}"
    );
}

//! Where the control plane's time and memory go at scale, without a kernel:
//! writes N services with E endpoints each as manifests, then times and
//! measures (VmHWM) each phase the agent runs for a full sync: reading the
//! manifests, translating them, and diffing a second identical snapshot.
//!
//! `cargo run --release -p agent --example control_profile -- 10000 10`

use std::{fmt::Write as _, time::Instant};

use ferry::{model, source::manifests};

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let services: u32 = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let per_service: u32 = args.next().map_or(Ok(10), |a| a.parse())?;
    let dir = std::env::temp_dir().join(format!("ferry-control-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let t = Instant::now();
    let mut yaml = String::new();
    for i in 0..services {
        let (a, b) = (i / 250, i % 250);
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns}}\nspec:\n  clusterIP: 10.96.{a}.{b}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, namespace: ns, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
        );
        for e in 0..per_service {
            let n = i * per_service + e;
            let _ = writeln!(
                yaml,
                "- {{addresses: [10.{}.{}.{}], conditions: {{ready: true}}, nodeName: n1}}",
                128 + n / 65_536,
                (n / 256) % 256,
                n % 256
            );
        }
        yaml.push_str("---\n");
    }
    std::fs::write(dir.join("all.yaml"), &yaml)?;
    println!(
        "wrote {services} services x {per_service} endpoints: {:.1} MiB of YAML in {:?}",
        yaml.len() as f64 / 1048576.0,
        t.elapsed()
    );
    drop(yaml);
    let base = vm_hwm_mib();

    let t = Instant::now();
    let loaded = manifests::load(&dir)?;
    println!(
        "load (read + parse):  {:>8.0?}  VmHWM {:.0} MiB (+{:.0})",
        t.elapsed(),
        vm_hwm_mib(),
        vm_hwm_mib() - base
    );
    let update = loaded.into_update("n1".into());

    let t = Instant::now();
    let (desired, diags) = model::translate(&update.inputs);
    println!(
        "translate:            {:>8.0?}  VmHWM {:.0} MiB; {} frontends, {} diagnostics",
        t.elapsed(),
        vm_hwm_mib(),
        desired.frontends.len(),
        diags.len()
    );
    let t = Instant::now();
    let (again, _) = model::translate(&update.inputs);
    println!(
        "translate again:      {:>8.0?}  (what one change costs today: a full translation)",
        t.elapsed()
    );
    let t = Instant::now();
    let same = again == desired;
    println!("compare snapshots:    {:>8.0?}  equal: {same}", t.elapsed());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

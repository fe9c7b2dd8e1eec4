//! Where the control plane's time and memory go at scale, without a kernel:
//! writes N services with E endpoints each as manifests (250 services a
//! file, as the bench does), then times and measures (VmHWM) each phase of
//! the agent's work into the in-memory maps: reading the files, the full
//! sync, and single endpoint changes through the incremental path.
//!
//! `cargo run --release -p agent --example control_profile -- 10000 10`

use std::{fmt::Write as _, time::Instant};

use ferry::{
    control::Controller,
    datapath::{Programmer, mem_maps::MemMaps, service_table::ServiceTable},
    model::{
        objects::{ObjKey, SliceObj},
        translate::Config,
    },
    source::{
        event::{Delta, Event},
        manifests,
    },
};
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn slice_yaml(i: u32, per_service: u32, first: Option<&str>) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, namespace: ns, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
    );
    for e in 0..per_service {
        let n = i * per_service + e;
        let addr = match (e, first) {
            (0, Some(a)) => a.to_owned(),
            _ => format!("10.{}.{}.{}", 128 + n / 65_536, (n / 256) % 256, n % 256),
        };
        let _ = writeln!(
            y,
            "- {{addresses: [{addr}], conditions: {{ready: true}}, nodeName: n1}}"
        );
    }
    y
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let services: u32 = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let per_service: u32 = args.next().map_or(Ok(10), |a| a.parse())?;
    let dir = std::env::temp_dir().join(format!("ferry-control-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let t = Instant::now();
    let mut bytes = 0;
    for chunk in 0..services.div_ceil(250) {
        let mut yaml = String::new();
        for i in chunk * 250..((chunk + 1) * 250).min(services) {
            let (a, b) = (i / 250, i % 250);
            let _ = write!(
                yaml,
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns}}\nspec:\n  clusterIP: 10.96.{a}.{b}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n{}---\n",
                slice_yaml(i, per_service, None)
            );
        }
        bytes += yaml.len();
        std::fs::write(dir.join(format!("bench-{chunk:05}.yaml")), &yaml)?;
    }
    println!(
        "wrote {services} services x {per_service} endpoints: {:.1} MiB of YAML in {:?}",
        bytes as f64 / 1048576.0,
        t.elapsed()
    );
    let base = vm_hwm_mib();

    let t = Instant::now();
    let loaded = manifests::load(&dir, "n1")?;
    println!(
        "read + parse:       {:>8.0?}  VmHWM {:.0} MiB (+{:.0}); {} diagnostics",
        t.elapsed(),
        vm_hwm_mib(),
        vm_hwm_mib() - base,
        loaded.diagnostics.len()
    );

    let cfg = Config {
        node_name: "n1".into(),
        ..Config::default()
    };
    let maps = MemMaps::default();
    let mut table = ServiceTable::new(Programmer::adopt(maps.clone()));
    let mut ctl = Controller::new(cfg, None);
    let t = Instant::now();
    let o = loaded.objects;
    for s in o.services.into_values() {
        ctl.apply(Event::Service(Delta::Applied(s)));
    }
    for s in o.slices.into_values() {
        ctl.apply(Event::Slice(Delta::Applied(s)));
    }
    println!(
        "apply to tracker:   {:>8.0?}  VmHWM {:.0} MiB",
        t.elapsed(),
        vm_hwm_mib()
    );
    let t = Instant::now();
    let f = ctl.full_sync(&mut table, Instant::now());
    println!(
        "full sync:          {:>8.0?}  VmHWM {:.0} MiB; {} services, {} frontends added",
        t.elapsed(),
        vm_hwm_mib(),
        f.services,
        f.outcome.added
    );

    let mut times = Vec::new();
    for k in 0..200u32 {
        let i = (k * 7919 + 13) % services;
        let yaml = slice_yaml(
            i,
            per_service,
            Some(&format!("10.200.{}.{}", k / 250, k % 250 + 1)),
        );
        let slice: EndpointSlice = serde_yaml::from_str(&yaml)?;
        let key = ObjKey::new("ns", format!("s{i}-1"));
        let t = Instant::now();
        ctl.apply(Event::Slice(Delta::Applied(SliceObj::from_k8s(
            &key, &slice, "n1",
        ))));
        let f = ctl.flush(&mut table, Instant::now());
        times.push(t.elapsed());
        assert_eq!(f.services, 1);
    }
    times.sort();
    println!(
        "one change (convert, apply, translate, program): p50 {:?} p99 {:?} max {:?}",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[times.len() - 1]
    );
    println!("VmHWM at the end: {:.0} MiB", vm_hwm_mib());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

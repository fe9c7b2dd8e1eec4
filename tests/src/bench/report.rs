//! The report: `benchmarks.md` (tables with medians, ranges and ratios, the targets, the
//! method), `benchmarks.json` (every sample), and gnuplot PNGs of the scaling curves.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result};

use super::{
    Family, Outcome, Report,
    control::SizeResult,
    eastwest::{Contender, Point, Runs},
    stats::{MedianCi, Summary, paired_ratio, paired_ratio_ci, percentile, ratio},
};
use crate::proc::{self, Placement};

const EW_PNG: &str = "bench-eastwest.png";
const CP_PNG: &str = "bench-control.png";

pub fn write(out: &Path, r: &Report) -> Result<PathBuf> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    fs::write(
        out.join("benchmarks.json"),
        serde_json::to_string_pretty(r)?,
    )?;
    let plots = plot(out, r);
    let md = markdown(r, &plots);
    let path = out.join("benchmarks.md");
    fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// Formatting

pub(super) fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    if x.abs() >= 1000.0 {
        let s = format!("{:.0}", x);
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// A count (services, endpoints, samples): no decimals.
fn count(n: usize) -> String {
    if n < 1000 {
        n.to_string()
    } else {
        num(n as f64)
    }
}

pub(super) fn cell(s: Option<Summary>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
        Some(s) => num(s.median),
        None => "–".into(),
    }
}

pub(super) fn ratio_cell(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}"))
}

fn opt_secs(x: Option<f64>) -> String {
    x.map_or("–".into(), |s| format!("{} s", num(s)))
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("–".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

// ---------------------------------------------------------------------------------------------
// East-west

fn point(points: &[Point], n: usize, family: Family, c: Contender) -> Option<&Point> {
    points
        .iter()
        .find(|p| p.n == n && p.family == family && p.contender == c)
}

fn ew_metric(
    points: &[Point],
    n: usize,
    family: Family,
    c: Contender,
    f: fn(&Point) -> &[f64],
) -> Option<Summary> {
    point(points, n, family, c).and_then(|p| Summary::of(f(p)))
}

/// The families measured at `n` (IPv4 first).
fn ew_families(points: &[Point], n: usize) -> Vec<Family> {
    Family::ALL
        .into_iter()
        .filter(|&fam| points.iter().any(|p| p.n == n && p.family == fam))
        .collect()
}

/// The confidence of the paired ratios' intervals.
const CONFIDENCE: f64 = 0.95;

/// A paired ratio: its median and interval to three decimals (a percent must show).
fn paired_cell(ci: Option<MedianCi>) -> String {
    match ci {
        Some(c) if c.n > 1 => format!("{:.3} {}", c.median, interval(&c)),
        Some(c) => format!("{:.3}", c.median),
        None => "–".into(),
    }
}

/// `[lo, hi]`, with its coverage when too few pairs reach 95 % (the range of fewer than 6).
fn interval(c: &MedianCi) -> String {
    if c.coverage + 1e-9 >= CONFIDENCE {
        format!("[{:.3}, {:.3}]", c.lo, c.hi)
    } else {
        format!("[{:.3}, {:.3}] ({:.0} %)", c.lo, c.hi, c.coverage * 100.0)
    }
}

/// ferry / direct over the pairs (each round's two short runs, back to back): the median of
/// the pairs' ratios with its interval; None unless the section ran paired.
fn ew_paired(points: &[Point], n: usize, family: Family) -> Option<MedianCi> {
    let f = point(points, n, family, Contender::Ferry)?;
    let d = point(points, n, family, Contender::Direct)?;
    paired_ratio_ci(&f.conns_per_sec, &d.conns_per_sec, CONFIDENCE)
}

/// One row per size and family, each family's rows beside the other's at the same size.
/// Once IPv6 was measured, each row names its family. `paired`: the ferry / direct column is
/// the median of the pairs' ratios with its interval, else the ratio of the medians.
fn ew_table(
    md: &mut String,
    points: &[Point],
    sizes: &[usize],
    title: &str,
    f: fn(&Point) -> &[f64],
    paired: bool,
) {
    let head = if paired {
        "ferry / direct, paired [95 % CI]"
    } else {
        "ferry / direct"
    };
    let _ = writeln!(
        md,
        "\n**{title}**\n\n| services (N) | direct pod IP | ferry | kube-proxy iptables | kube-proxy nftables | {head} | ferry / iptables | ferry / nftables |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let ipv6 = points.iter().any(|p| p.family == Family::V6);
    for &n in sizes {
        for family in ew_families(points, n) {
            ew_row(md, points, n, family, ipv6, f, paired);
        }
    }
}

fn ew_row(
    md: &mut String,
    points: &[Point],
    n: usize,
    family: Family,
    label_family: bool,
    f: fn(&Point) -> &[f64],
    paired: bool,
) {
    let s = |c| ew_metric(points, n, family, c, f);
    let ferry = s(Contender::Ferry);
    let label = if label_family {
        format!("{}, {}", count(n), family.label())
    } else {
        count(n)
    };
    let vs_direct = if paired {
        paired_cell(ew_paired(points, n, family))
    } else {
        ratio_cell(ratio(ferry, s(Contender::Direct)))
    };
    let _ = writeln!(
        md,
        "| {} | {} | {} | {} | {} | {} | {} | {} |",
        label,
        cell(s(Contender::Direct)),
        cell(ferry),
        cell(s(Contender::Iptables)),
        cell(s(Contender::Nftables)),
        vs_direct,
        ratio_cell(ratio(ferry, s(Contender::Iptables))),
        ratio_cell(ratio(ferry, s(Contender::Nftables))),
    );
}

/// The CPU time per short connection of each contender (wrk's and the servers' time on CPU
/// over the connections made) and direct / ferry of it, paired: what a connection costs,
/// whatever share of the CPU other tenants left to the run.
fn ew_cpu_cost(md: &mut String, points: &[Point], sizes: &[usize]) {
    if !points.iter().any(|p| !p.cpu_us_per_conn.is_empty()) {
        return;
    }
    let _ = writeln!(
        md,
        "\n**CPU time per short connection, µs (wrk's and both servers' time on CPU, lower is \
         better)**: direct / ferry is what ferry's connections/s would be, as a share of \
         direct's, with the CPU to themselves.\n\n\
         | services (N) | direct pod IP | ferry | kube-proxy iptables | kube-proxy nftables | direct / ferry, paired [95 % CI] |\n\
         |---:|---:|---:|---:|---:|---:|"
    );
    let ipv6 = points.iter().any(|p| p.family == Family::V6);
    for &n in sizes {
        for family in ew_families(points, n) {
            let s = |c| ew_metric(points, n, family, c, cpu_cost);
            let label = if ipv6 {
                format!("{}, {}", count(n), family.label())
            } else {
                count(n)
            };
            let paired = match (
                point(points, n, family, Contender::Direct),
                point(points, n, family, Contender::Ferry),
            ) {
                (Some(d), Some(f)) => {
                    paired_ratio_ci(&d.cpu_us_per_conn, &f.cpu_us_per_conn, CONFIDENCE)
                }
                _ => None,
            };
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} |",
                cell(s(Contender::Direct)),
                cell(s(Contender::Ferry)),
                cell(s(Contender::Iptables)),
                cell(s(Contender::Nftables)),
                paired_cell(paired),
            );
        }
    }
}

fn cpu_cost(p: &Point) -> &[f64] {
    &p.cpu_us_per_conn
}

/// ferry / direct over the pairs `runs` picks from each contender's point (connections/s), and
/// direct / ferry of their CPU time per connection.
fn ew_extra_paired(
    points: &[Point],
    n: usize,
    family: Family,
    runs: fn(&Point) -> Option<&Runs>,
) -> (Option<MedianCi>, Option<MedianCi>) {
    let pair = |c| point(points, n, family, c).and_then(runs);
    match (pair(Contender::Ferry), pair(Contender::Direct)) {
        (Some(f), Some(d)) => (
            paired_ratio_ci(&f.conns_per_sec, &d.conns_per_sec, CONFIDENCE),
            paired_ratio_ci(&d.cpu_us_per_conn, &f.cpu_us_per_conn, CONFIDENCE),
        ),
        _ => (None, None),
    }
}

/// The one-backend pair beside the two-backend one: what ferry's hooks and translation cost
/// per connection, apart from spreading a client's connections over two servers.
fn ew_one(md: &mut String, points: &[Point], sizes: &[usize]) {
    if !points.iter().any(|p| p.one.is_some()) {
        return;
    }
    let _ = writeln!(
        md,
        "\n**One backend: what ferry itself costs per connection.** Behind the Service ferry \
         spreads each wrk thread's connections over both servers (a random backend per \
         connection, as kube-proxy does), while direct gives each thread a server of its own. \
         On one CPU the spreading costs by itself: each server is woken for fewer of a \
         thread's connections at a time, so the CPU switches between the three processes more \
         often per connection (found with perf, cpu-clock over the pinned CPU: the servers' \
         time per connection rose as much as wrk's, in the scheduler and the socket lookups, \
         not in ferry's programs). So each round also pairs direct and ferry over one \
         backend, back to back, the order alternating: direct's threads both dial the first \
         backend, ferry a Service (`10.96.0.11`, `fd00:96::b`) whose only endpoint it is. \
         Everything but ferry's hooks and translation is then the same on both sides.\n\n\
         | services (N) | direct, one backend | ferry, one endpoint | ferry / direct, one backend, paired [95 % CI] | ferry / direct, two backends (above) | CPU time / connection, direct / ferry, one backend, paired [95 % CI] |\n\
         |---:|---:|---:|---:|---:|---:|"
    );
    let ipv6 = points.iter().any(|p| p.family == Family::V6);
    let one_conns = |n, family, c| {
        point(points, n, family, c)
            .and_then(one_runs)
            .and_then(|r| Summary::of(&r.conns_per_sec))
    };
    for &n in sizes {
        for family in ew_families(points, n) {
            let label = if ipv6 {
                format!("{}, {}", count(n), family.label())
            } else {
                count(n)
            };
            let (conns, cpu) = ew_extra_paired(points, n, family, one_runs);
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} |",
                cell(one_conns(n, family, Contender::Direct)),
                cell(one_conns(n, family, Contender::Ferry)),
                paired_cell(conns),
                paired_cell(ew_paired(points, n, family)),
                paired_cell(cpu),
            );
        }
    }
}

/// The one-backend pair's runs of a point.
fn one_runs(p: &Point) -> Option<&Runs> {
    p.one.as_ref()
}

/// The spread pair's runs of a point.
fn spread_runs(p: &Point) -> Option<&Runs> {
    p.spread.as_ref()
}

/// The spread pair: both backends, each connection to a random one on both sides.
fn ew_spread(md: &mut String, points: &[Point], sizes: &[usize]) {
    if !points.iter().any(|p| p.spread.is_some()) {
        return;
    }
    let _ = writeln!(
        md,
        "\n**Two backends, spread alike.** wrk's threads each keep one address, so above direct \
         gives each thread a server of its own while the Service spreads every thread's \
         connections over both. So each round also pairs direct and ferry, back to back, the \
         order alternating, with a client that picks a random server per connection \
         (`ferry-bench shortconn`, tests/src/bench/shortconn.rs: an epoll loop per thread, as \
         lean as wrk: on loopback, pinned to one CPU, it made 38-40 thousand connections/s \
         where wrk made 36-37 thousand, so it dilutes ferry's cost per connection no more \
         than wrk would): direct dials a random backend's pod IP, ferry the ClusterIP, whose hook \
         picks a random backend. Same connections (8) and threads (2) as wrk's runs; both \
         servers answer either side.\n\n\
         | services (N) | direct, spread per connection | ferry | ferry / direct, spread alike, paired [95 % CI] | CPU time / connection, direct / ferry, paired [95 % CI] |\n\
         |---:|---:|---:|---:|---:|"
    );
    let ipv6 = points.iter().any(|p| p.family == Family::V6);
    let conns = |n, family, c| {
        point(points, n, family, c)
            .and_then(spread_runs)
            .and_then(|r| Summary::of(&r.conns_per_sec))
    };
    for &n in sizes {
        for family in ew_families(points, n) {
            let label = if ipv6 {
                format!("{}, {}", count(n), family.label())
            } else {
                count(n)
            };
            let (ratio, cpu) = ew_extra_paired(points, n, family, spread_runs);
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} |",
                cell(conns(n, family, Contender::Direct)),
                cell(conns(n, family, Contender::Ferry)),
                paired_cell(ratio),
                paired_cell(cpu),
            );
        }
    }
}

/// What the hypervisor took from the pinned CPU during the pairs' short runs, and how the
/// pairs whose runs lost more than a little compare with the others: the VM's slowed
/// stretches are only partly visible as steal, so this is said, not used to leave pairs out.
fn ew_steal(md: &mut String, points: &[Point], sizes: &[usize], cpu: usize) {
    const MUCH: f64 = 0.05;
    let mut shares = Vec::new();
    let mut rows = Vec::new();
    for &n in sizes {
        for family in ew_families(points, n) {
            let (Some(f), Some(d)) = (
                point(points, n, family, Contender::Ferry),
                point(points, n, family, Contender::Direct),
            ) else {
                continue;
            };
            if f.cpu.len() != f.conns_per_sec.len() || d.cpu.len() != d.conns_per_sec.len() {
                continue;
            }
            let pair_steal: Vec<f64> = f
                .cpu
                .iter()
                .zip(&d.cpu)
                .map(|(a, b)| a.steal_share().max(b.steal_share()))
                .collect();
            shares.extend(f.cpu.iter().chain(&d.cpu).map(|c| c.steal_share()));
            let stolen = pair_steal.iter().filter(|&&x| x > MUCH).count();
            let calm = |keep: bool| -> Vec<f64> {
                f.conns_per_sec
                    .iter()
                    .zip(&d.conns_per_sec)
                    .zip(&pair_steal)
                    .filter(|(_, s)| (**s <= MUCH) == keep)
                    .map(|((a, b), _)| a / b)
                    .collect()
            };
            if stolen > 0 {
                rows.push(format!(
                    "{}, {}: {stolen} of {} pairs, their ratios' median {} (the others' {})",
                    count(n),
                    family.label(),
                    pair_steal.len(),
                    ratio3(Summary::of(&calm(false)).map(|s| s.median)),
                    ratio3(Summary::of(&calm(true)).map(|s| s.median)),
                ));
            }
        }
    }
    let Some(all) = Summary::of(&shares) else {
        return;
    };
    let _ = writeln!(
        md,
        "\nCPU {cpu}'s steal time (`/proc/stat`: the vCPU waiting for the host) during the pairs' \
         short runs: median {:.1} %, at most {:.1} %. Pairs with a run that lost more than {:.0} % \
         to steal: {}. They stay in the ratios: steal shows only part of the host's slow \
         stretches (another tenant on CPU {cpu} inside the VM counts as busy, not stolen), and \
         both runs of a pair share most of a stretch.",
        all.median * 100.0,
        all.max * 100.0,
        MUCH * 100.0,
        if rows.is_empty() {
            "none".to_owned()
        } else {
            rows.join("; ")
        }
    );
}

fn ratio3(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{x:.3}"))
}

fn conns(p: &Point) -> &[f64] {
    &p.conns_per_sec
}
fn p50(p: &Point) -> &[f64] {
    &p.p50_us
}
fn p99(p: &Point) -> &[f64] {
    &p.p99_us
}

// ---------------------------------------------------------------------------------------------
// Plots

struct Plots {
    eastwest: Option<String>,
    control: Option<String>,
    flood: Option<String>,
    note: Option<String>,
}

fn gnuplot(dir: &Path, script: &str) -> Result<()> {
    let file = dir.join(".plot.gp");
    fs::write(&file, script)?;
    let out = proc::output_placed(
        // Named from the directory it runs in: a relative --out would be resolved twice.
        Command::new("gnuplot").arg(".plot.gp").current_dir(dir),
        &Placement::default(),
        Duration::from_secs(60),
    )?;
    let _ = fs::remove_file(&file);
    if !out.status.success() {
        anyhow::bail!("gnuplot failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn plot(out: &Path, r: &Report) -> Plots {
    let mut plots = Plots {
        eastwest: None,
        control: None,
        flood: None,
        note: None,
    };
    if super::env::tool("gnuplot", "gnuplot-nox").is_err() {
        plots.note = Some("gnuplot is missing (apt-get install gnuplot-nox): no plots".into());
        return plots;
    }
    let mut errors = Vec::new();
    if let Some(ew) = r.eastwest.done() {
        let mut data = String::from(
            "# N  then median min max per contender: direct ferry iptables nftables, IPv4 then IPv6\n",
        );
        for &n in &ew.config.sizes {
            let _ = write!(data, "{n}");
            for family in Family::ALL {
                for c in Contender::ALL {
                    match ew_metric(&ew.points, n, family, c, conns) {
                        Some(s) => {
                            let _ = write!(data, " {} {} {}", s.median, s.min, s.max);
                        }
                        None => data.push_str(" NaN NaN NaN"),
                    }
                }
            }
            data.push('\n');
        }
        let dat = out.join(".eastwest.dat");
        // IPv6 (dashed, the same colour per contender) once it was measured.
        let ipv6 = ew.points.iter().any(|p| p.family == Family::V6);
        let titles = [
            "direct pod IP (limit)",
            "ferry (socket layer)",
            "kube-proxy iptables",
            "kube-proxy nftables",
        ];
        let mut lines = Vec::new();
        for (k, title) in titles.iter().enumerate() {
            let col = 2 + 3 * k;
            let suffix = if ipv6 { ", IPv4" } else { "" };
            lines.push(format!(
                "'.eastwest.dat' using 1:{}:{}:{} with yerrorlines lw 2 lc {} title '{title}{suffix}'",
                col,
                col + 1,
                col + 2,
                k + 1
            ));
        }
        if ipv6 {
            for (k, title) in titles.iter().enumerate() {
                let col = 14 + 3 * k;
                lines.push(format!(
                    "'.eastwest.dat' using 1:{}:{}:{} with yerrorlines lw 2 dt 2 lc {} title '{title}, IPv6'",
                    col,
                    col + 1,
                    col + 2,
                    k + 1
                ));
            }
        }
        // Eight lines: their key below the plot, IPv4's column beside IPv6's.
        let (height, key) = if ipv6 {
            (640, "set key below horizontal maxrows 4")
        } else {
            (540, "set key bottom left")
        };
        let script = format!(
            "set terminal pngcairo size 900,{height} font ',11'\nset output '{EW_PNG}'\n\
             set title 'East-west: short connections per second vs. services programmed'\n\
             set xlabel 'services programmed (N, log scale)'\nset ylabel 'connections / s (median, min-max)'\n\
             set logscale x\nset xrange [0.5:20000]\nset yrange [0:*]\n{key}\nset grid\n\
             plot {}\n",
            lines.join(", ")
        );
        match fs::write(&dat, data)
            .map_err(anyhow::Error::from)
            .and_then(|()| gnuplot(out, &script))
        {
            Ok(()) => plots.eastwest = Some(EW_PNG.into()),
            Err(e) => errors.push(format!("east-west plot: {e:#}")),
        }
        let _ = fs::remove_file(&dat);
    }
    if let Some(cp) = r.control.done() {
        let mut data = String::from(
            "# services  manifests-write api-write manifests-event api-event (p99, ms)\n",
        );
        let v = |x: Option<f64>| x.map_or("NaN".to_owned(), |x| x.to_string());
        for s in cp {
            let p99 = |xs: &[f64]| percentile(xs, 99.0);
            let _ = writeln!(
                data,
                "{} {} {} {} {}",
                s.services,
                v(p99(&s.manifests.change_ms)),
                v(p99(&s.api.change_ms)),
                v(p99(&s.manifests.event_ms)),
                v(p99(&s.api.event_ms))
            );
        }
        let dat = out.join(".control.dat");
        let script = format!(
            "set terminal pngcairo size 900,540 font ',11'\nset output '{CP_PNG}'\n\
             set title 'Control plane: one endpoint change to the map written (p99) vs. services'\n\
             set xlabel 'services (log scale)'\nset ylabel 'milliseconds (log scale)'\n\
             set logscale xy\nset key top left\nset grid\n\
             plot '.control.dat' using 1:2 with linespoints lw 2 title 'file renamed in (manifests)', \
             '' using 1:3 with linespoints lw 2 title 'API write (Kubernetes API)', \
             '' using 1:4 with linespoints lw 2 title 'event received, manifests', \
             '' using 1:5 with linespoints lw 2 title 'event received, API'\n"
        );
        match fs::write(&dat, data)
            .map_err(anyhow::Error::from)
            .and_then(|()| gnuplot(out, &script))
        {
            Ok(()) => plots.control = Some(CP_PNG.into()),
            Err(e) => errors.push(format!("control-plane plot: {e:#}")),
        }
        let _ = fs::remove_file(&dat);
    }
    if let Some((data, script)) = r.flood.done().and_then(super::flood::plot) {
        let dat = out.join(".flood.dat");
        match fs::write(&dat, data)
            .map_err(anyhow::Error::from)
            .and_then(|()| gnuplot(out, &script))
        {
            Ok(()) => plots.flood = Some(super::flood::PNG.into()),
            Err(e) => errors.push(format!("flood plot: {e:#}")),
        }
        let _ = fs::remove_file(&dat);
    }
    if !errors.is_empty() {
        plots.note = Some(errors.join("; "));
    }
    plots
}

// ---------------------------------------------------------------------------------------------
// The document

fn not_measured(md: &mut String, why: &str) {
    let _ = writeln!(md, "\n**Not measured:** {why}");
}

fn markdown(r: &Report, plots: &Plots) -> String {
    let m = &r.machine;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Benchmarks\n\n\
         ferry side by side with the physical limit (pods talking to pod IPs, no translation) and \
         with kube-proxy's iptables and nftables rule layouts, at 1 to 10,000 services. Generated by \
         `cargo xtask bench`{}; rerun it to reproduce (root, about 15 minutes).\n\n\
         | machine | |\n|---|---|\n| date | {} |\n| kernel | {} |\n| CPU | {} |\n| cores | {} |\n| memory | {:.0} GiB |\n| run time | {:.0} s |\n\n\
         This ran on a **shared 2-core VM** while other engineers were building on it: absolute \
         numbers are noisy and mean little. Every comparison is made inside one run, with the \
         contenders interleaved round by round (A B C D, then B C D A, ...), and each cell gives \
         the median of the rounds and their range (min–max). Read the ratios.",
        if r.quick {
            " --quick (a smoke run: tiny sizes, one short round; not a measurement)"
        } else {
            ""
        },
        m.date,
        m.kernel,
        m.cpu,
        m.cores,
        m.memory_gib,
        r.took_secs
    );

    targets(&mut md, r);

    // 1. East-west
    let _ = writeln!(md, "\n## 1. East-west: pod to ClusterIP\n");
    let _ = writeln!(
        md,
        "A client pod calls a ClusterIP service with two backends (one HTTP server each); N services \
         are programmed, the others being filler with 2–3 endpoints each (the measured service sits \
         in the middle of kube-proxy's `KUBE-SERVICES` chain, where a service lands on average)."
    );
    match &r.eastwest {
        Outcome::Done(ew) => {
            let _ = writeln!(
                md,
                "\n*Connections/s*: `wrk -t{} -c{} -H 'Connection: close'` (connect, one request, \
                 close), higher is better. *Latency*: one kept-alive connection (`wrk -t1 -c1 \
                 --latency`), lower is better.",
                ew.config.threads.max(1),
                ew.config.conns
            );
            if ew.config.paired {
                let _ = writeln!(
                    md,
                    "\n{rounds} rounds of {secs} s runs per N and family, {conns} connections. \
                     **Pairs.** Each round's direct and ferry short-connection runs go back to \
                     back, the order alternating round by round (direct first in even rounds), \
                     then the two kube-proxy contenders' (their order alternating too){kept}. The \
                     headline ferry / direct is the median of the {rounds} pairs' ratios \
                     ferry_i / direct_i, in brackets its distribution-free 95 % interval (the \
                     order statistics x(k) and x(n+1-k) of the sorted ratios, k from \
                     Binomial(n, 1/2); with 16 pairs the 4th and 13th, coverage 97.9 %). The \
                     VM's speed drifts by ±20 % over seconds, which the medians of the \
                     contenders' runs (the other columns, with their min–max) carry in full; \
                     within a pair, 1 s apart, most of it cancels. The interval assumes the \
                     pairs independent; what drifts within a pair's 2 s does not cancel, and \
                     the alternating order keeps it from favouring either. The other ratios are \
                     the medians' (the runs are not back to back). The interval's width is \
                     the run's resolution: one that holds 0.99 does not decide the target (the \
                     Targets table says so). When other tenants share CPU {cpu} the runs get \
                     more or less of it from one second to the next, which pairs cancel only in \
                     part; the CPU-time table below divides that out (the cost of a \
                     connection, not the share of the CPU it got).{}",
                    monitor_note(ew.config.monitor),
                    rounds = ew.config.rounds,
                    cpu = ew.config.pin_cpu.unwrap_or(0),
                    secs = ew.config.secs,
                    conns = ew.config.conns,
                    kept = if ew.config.kept_every > 1 {
                        format!(
                            "; the kept-alive (latency) runs follow in every {}. round",
                            ew.config.kept_every
                        )
                    } else {
                        "; the kept-alive (latency) runs follow".to_owned()
                    },
                );
            } else {
                let _ = writeln!(
                    md,
                    "\n{} rounds of {} s per contender and N, {} connections.{}",
                    ew.config.rounds,
                    ew.config.secs,
                    ew.config.conns,
                    monitor_note(ew.config.monitor)
                );
            }
            if ew.config.threads > 1 {
                let _ = writeln!(
                    md,
                    "\nwrk runs {} threads (`-t{}`) for every contender; direct gives each thread one \
                     backend (a `setup` script), so both servers take half of its connections as \
                     they do behind the Service.",
                    ew.config.threads, ew.config.threads
                );
            }
            if let Some(cpu) = ew.config.pin_cpu {
                let _ = writeln!(
                    md,
                    "\nwrk and both servers are pinned to CPU {cpu} (`taskset -c {cpu}`): one core \
                     pays for each connection end to end (client, socket hooks, softirq, server), \
                     so what a contender costs per connection shows in connections/s."
                );
            }
            if ew.points.iter().any(|p| p.family == Family::V6) {
                let _ = writeln!(
                    md,
                    "\nIPv4 and IPv6 (the rows say which): the services are dual-stack (an IPv6 \
                     ClusterIP from `fd00:96::/108` and IPv6 endpoints beside the IPv4 ones, the \
                     target `fd00:96::a`), every client, router and backend has the IPv6 twin of \
                     its IPv4 address, routed the same way, and the kube-proxy routers hold both \
                     of its proxiers' rules (`iptables-restore` and `ip6tables-restore`; tables \
                     `ip kube-proxy` and `ip6 kube-proxy`). The IPv6 rows dial the IPv6 \
                     addresses (`http://[fd00:96::a]:80/`, the backends' `fd00:10:244::N`); \
                     each round runs both families, their order alternating."
                );
            }
            ew_table(
                &mut md,
                &ew.points,
                &ew.config.sizes,
                "Short connections per second (higher is better)",
                conns,
                ew.config.paired,
            );
            ew_cpu_cost(&mut md, &ew.points, &ew.config.sizes);
            ew_one(&mut md, &ew.points, &ew.config.sizes);
            ew_spread(&mut md, &ew.points, &ew.config.sizes);
            if let (true, Some(cpu)) = (ew.config.paired, ew.config.pin_cpu) {
                ew_steal(&mut md, &ew.points, &ew.config.sizes, cpu);
            }
            ew_table(
                &mut md,
                &ew.points,
                &ew.config.sizes,
                "Request latency p50 on a kept-alive connection, µs (lower is better)",
                p50,
                false,
            );
            ew_table(
                &mut md,
                &ew.points,
                &ew.config.sizes,
                "Request latency p99 on a kept-alive connection, µs (lower is better)",
                p99,
                false,
            );
            ew_monitor(&mut md, &ew.points, &ew.config.sizes, ew.config.paired);
            ew_programs(&mut md, &ew.points, &ew.config.sizes);
            let errors: u64 = ew
                .points
                .iter()
                .map(|p| p.errors + p.monitor.as_ref().map_or(0, |m| m.errors))
                .sum();
            let _ = writeln!(
                md,
                "\nSocket errors and non-2xx responses over all runs: {errors}."
            );
            let prog: Vec<String> = ew
                .program_secs
                .iter()
                .map(|(n, c, s)| {
                    format!("{} at N = {}: {}", c.label(), count(*n), opt_secs(Some(*s)))
                })
                .collect();
            if !prog.is_empty() {
                let _ = writeln!(
                    md,
                    "\nTime to program each set before its rounds (wall clock, for scale): {}.",
                    prog.join("; ")
                );
            }
            if let Some(png) = &plots.eastwest {
                let _ = writeln!(
                    md,
                    "\n![East-west connections per second vs. services]({png})"
                );
            }
        }
        Outcome::NotMeasured(why) => not_measured(&mut md, why),
    }

    // 2. North-south
    let _ = writeln!(
        md,
        "\n## 2. North-south: external client to a LoadBalancer IP\n"
    );
    match &r.northsouth {
        Outcome::Done(ns) => northsouth(&mut md, ns),
        Outcome::NotMeasured(why) => not_measured(&mut md, why),
    }

    // 3. Program cost
    let _ = writeln!(md, "\n## 3. Program cost: BPF_PROG_TEST_RUN\n");
    match &r.progcost {
        Outcome::Done(pc) => {
            let _ = writeln!(
                md,
                "ferry's TC programs on hand-built frames of a LoadBalancer flow (one local backend), \
                 {} runs per path. `repeat` stays 1: with a larger count the kernel reruns the program \
                 on the *same* skb, which the first run has already translated, so every later run \
                 would measure the pass-through path. Each run is followed by a run of an empty \
                 classifier on the same frame; each figure is the median (and p99) of the kernel's \
                 per-run `duration` minus the empty program's median over the same runs ({} ns: the \
                 test-run timer itself).\n\n\
                 **The conntrack map's state.** A new flow is timed with its two entries removed by \
                 key after each run, on a map that has been used: the first row takes {} new flows \
                 back to back into the map (a fresh 5-tuple per run, so every flow's entries land \
                 in memory not touched lately: what a burst of new connections costs), then the map \
                 is emptied. On the map as loaded, whose LRU lists have never moved an element, the \
                 same program on the same frame costs about 1.6 x more (its row says how much): \
                 measured for TC and XDP alike, each program's miss timed in the other's place took \
                 the other's figure, so the state, not the program, made the difference between \
                 earlier reports' TC miss (~357 ns) and XDP miss (~224 ns).\n\n\
                 **At the VM's normal speed.** This VM (a Firecracker guest) runs slowed for \
                 stretches of seconds: everything at once, the empty program too (48 -> 75 ns, the \
                 paths 1.6-1.7 x), between one chunk of runs and the next within one load of the \
                 programs, whatever the program's JIT address or the conntrack element (measured: \
                 hit 120 -> 202 ns raw in the same chunks). A figure taken then, minus a baseline \
                 taken at normal speed, was the 'slow mode' of earlier reports (hit 146-180 ns). So \
                 the runs are cut in chunks of {} pairs, a chunk whose empty program's median is \
                 more than {} x the round's lowest is *slowed* and left out, and the figures are \
                 over the others; the slowed chunks' figure and count are given beside them \
                 (*slowed*). {}{}\n\n\
                 | family | path | program | ns per packet (median, normal speed) | p99 | raw median | slowed |\n|---|---|---|---:|---:|---:|---|",
                count(pc.samples),
                num(pc.baseline_ns),
                count(pc.samples),
                super::progcost::CHUNK,
                super::progcost::SLOWED,
                if pc.rounds > 1 {
                    format!(
                        "{} rounds, each on the programs and maps loaded afresh: every figure is \
                         the median of the rounds' figures (of those with a chunk at normal speed), \
                         with the range of all rounds' figures in brackets (and their two modes, \
                         if they fall in two).",
                        pc.rounds
                    )
                } else {
                    String::new()
                },
                if pc.has(Family::V6) {
                    "\n\n**IPv6.** The IPv6 rows time the same LoadBalancer flow (one local \
                     backend, eTP Local) over IPv6 frames and the IPv6 maps, by the same method: \
                     the IPv6 conntrack map first takes new flows back to back and is emptied, \
                     then the miss is timed with the flow forgotten by key after each run; hit and \
                     reply on the tracked flow; `ferry_xdp`'s miss and hit are redirected to the \
                     next hop over IPv6. Each IPv6 row was checked once, outside the timed runs, \
                     to leave the frame translated byte for byte as the table tests expect."
                } else {
                    ""
                }
            );
            for p in &pc.paths {
                let range = p.round_range_ns.map_or(String::new(), |(lo, hi)| {
                    format!(" ({}–{})", num(lo), num(hi))
                });
                let range = match super::progcost::modes(&p.rounds_ns) {
                    Some(m) => format!(
                        "{range}; modes {} ({} of {} loads), {} ({})",
                        num(m.low_ns),
                        m.low,
                        m.low + m.high,
                        num(m.high_ns),
                        m.high
                    ),
                    None => range,
                };
                let slowed = match p.slowed_ns {
                    Some(ns) if p.chunks > 0 => format!(
                        "{} ns in {} of {} chunks",
                        num(ns),
                        p.slowed_chunks,
                        p.chunks
                    ),
                    _ if p.chunks > 0 => format!("none of {} chunks", p.chunks),
                    _ => "–".into(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | `{}` | {}{range} | {} | {} | {slowed} |",
                    p.family.label(),
                    p.path,
                    p.program,
                    num(p.median_ns),
                    num(p.p99_ns),
                    num(p.raw_median_ns)
                );
            }
            if pc.xdp_baseline_ns.is_finite() {
                let _ = writeln!(
                    md,
                    "\n`ferry_xdp` rows: XDP test runs of the same frames, minus an empty XDP \
                     program's median ({} ns). Its miss and hit send the frame to the next hop (next-hop \
                     cache, or the FIB lookup on a miss of it, and the redirect), which TC's miss and \
                     hit (this flow handed to the stack) do not; the remote rows time both programs \
                     on the same work, a flow to a remote backend (DNAT, SNAT, next hop).",
                    num(pc.xdp_baseline_ns)
                );
            }
            let _ = writeln!(
                md,
                "\nCheck of the subtraction: the pass path leaves the packet as it is, so it can be \
                 timed with `repeat` {}: {} ns per packet on average.",
                num(f64::from(pc.pass_repeat)),
                num(pc.pass_repeat_ns)
            );
            let sizes: Vec<String> = pc
                .sizes
                .iter()
                .map(|(name, insns, jited)| {
                    format!(
                        "`{name}` {} instructions after the verifier, {} bytes JITed",
                        num(f64::from(*insns)),
                        num(f64::from(*jited))
                    )
                })
                .collect();
            let _ = writeln!(md, "\nProgram sizes: {}.", sizes.join("; "));
        }
        Outcome::NotMeasured(why) => not_measured(&mut md, why),
    }

    // 4. Control plane
    let _ = writeln!(md, "\n## 4. Control plane\n");
    match &r.control {
        Outcome::Done(cp) => control(&mut md, cp, plots),
        Outcome::NotMeasured(why) => not_measured(&mut md, why),
    }

    // 5. Flood
    let _ = writeln!(md, "\n## 5. Flood: north-south packets per second\n");
    match &r.flood {
        Outcome::Done(f) => super::flood::markdown(&mut md, f, plots.flood.as_deref()),
        Outcome::NotMeasured(why) => not_measured(&mut md, why),
    }

    if let Some(note) = &plots.note {
        let _ = writeln!(md, "\n*Plots:* {note}");
    }
    method(&mut md);
    md
}

fn northsouth(md: &mut String, ns: &super::northsouth::Results) {
    use super::northsouth::Contender as C;
    let ipv6 = ns.points.iter().any(|p| p.family == Family::V6)
        || ns.not_measured.iter().any(|u| u.family == Family::V6);
    let _ = writeln!(
        md,
        "On the two-node lab: an external client on the nodes' segment reaches a LoadBalancer \
         service (externalTrafficPolicy Local, one backend pod on the node) through node1, where \
         ferry's TC programs translate it, or through node2, where kube-proxy's iptables rules do \
         (its `KUBE-EXT-*` → `KUBE-SVL-*` → `KUBE-SEP-*` layout); the limit is the client routed \
         straight to the pod IP through node1. node2 runs no TC program and node1 no netfilter \
         rule. *Throughput*: one iperf3 TCP stream, Gbit/s. *Connections/s*: wrk as in section 1. \
         Checksum offload is off on every veth of this lab (the translating paths must compute \
         checksums for real), which caps throughput for every contender alike. {} rounds of {} s.{}{}\n\n\
         | | plain routing (limit) | ferry (TC) | kube-proxy iptables | ferry / routing | ferry / iptables |\n|---|---:|---:|---:|---:|---:|",
        ns.config.rounds,
        ns.config.secs,
        monitor_note(ns.config.monitor),
        if ipv6 {
            " The IPv6 rows: the same over the lab's IPv6 twins (the service dual-stack, its load \
             balancer IPs' twins, node2 with kube-proxy's IPv6 rules from `ip6tables-restore`), \
             the families interleaved round by round."
        } else {
            ""
        }
    );
    type Metric = fn(&super::northsouth::Point) -> &[f64];
    let get = |family: Family, c: C, f: Metric| {
        ns.points
            .iter()
            .find(|p| p.family == family && p.contender == c)
            .and_then(|p| Summary::of(f(p)))
    };
    let rows: [(&str, &str, Metric); 2] = [
        ("throughput", "Gbit/s (higher is better)", |p| {
            &p.gbits_per_sec
        }),
        ("short connections/s", "(higher is better)", |p| {
            &p.conns_per_sec
        }),
    ];
    let families: &[Family] = if ipv6 { &Family::ALL } else { &[Family::V4] };
    for (what, unit, f) in rows {
        for &family in families {
            let title = match (ipv6, unit.starts_with('(')) {
                (false, true) => format!("{what} {unit}"),
                (false, false) => format!("{what}, {unit}"),
                (true, true) => format!("{what}, {} {unit}", family.label()),
                (true, false) => format!("{what}, {}, {unit}", family.label()),
            };
            let ferry = get(family, C::Ferry, f);
            let _ = writeln!(
                md,
                "| {title} | {} | {} | {} | {} | {} |",
                cell(get(family, C::Routing, f)),
                cell(ferry),
                cell(get(family, C::Iptables, f)),
                ratio_cell(ratio(ferry, get(family, C::Routing, f))),
                ratio_cell(ratio(ferry, get(family, C::Iptables, f))),
            );
        }
    }
    for u in &ns.not_measured {
        let _ = writeln!(
            md,
            "\n**{} over {}: not measured.** {}",
            u.contender.label(),
            u.family.label(),
            u.why
        );
    }
    let failed: Vec<String> = ns
        .points
        .iter()
        .filter(|p| p.failed_runs > 0)
        .map(|p| {
            let over = if ipv6 {
                format!(" ({})", p.family.label())
            } else {
                String::new()
            };
            format!("{}{over} {}", p.contender.label(), p.failed_runs)
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\nRuns that failed (a load tool killed after overrunning its time by 15 s), left out of \
             the medians: {}.",
            failed.join(", ")
        );
    }
    ns_monitor(md, ns);
    let errors: u64 = ns
        .points
        .iter()
        .map(|p| p.errors + p.monitor.as_ref().map_or(0, |m| m.errors))
        .sum();
    let _ = writeln!(
        md,
        "\nSocket errors and non-2xx responses over all runs: {errors}."
    );
}

fn control(md: &mut String, cp: &[SizeResult], plots: &Plots) {
    let _ = writeln!(
        md,
        "ClusterIP services with their endpoints. *ferry*: from starting the agent to the log line \
         of the sync that put every frontend into the kernel; in brackets, the translation and \
         programming part of that sync (the rest is starting, reading and parsing). Two sources: \
         the manifests directory (YAML files, 250 services a file) and the Kubernetes API (the \
         lab's API server test double, streaming lists over TLS). *kube-proxy*: one \
         `iptables-restore` / `nft -f` of its rules for the same set into an empty lab namespace \
         (what its first sync writes), wall clock; the time kube-proxy spends generating them is \
         not counted, and the largest set is not restored (minutes each). Ratios below 1 mean \
         ferry is faster.\n\n\
         | services | endpoints | ferry, manifests | ferry, API | iptables-restore | nft -f | ferry API / iptables | ferry API / nftables |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for s in cp {
        let f = |run: &super::control::FerryRun| match (
            run.full_secs,
            run.full_program_secs,
            &run.error,
        ) {
            (Some(t), Some(p), _) => format!("{} s ({} ms)", num(t), num(p * 1e3)),
            (_, _, Some(e)) => format!("failed: {e}"),
            _ => "–".into(),
        };
        let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            count(s.services),
            count(s.endpoints),
            f(&s.manifests),
            f(&s.api),
            opt_secs(s.iptables_restore_secs),
            opt_secs(s.nft_secs),
            r(s.api.full_secs, s.iptables_restore_secs),
            r(s.api.full_secs, s.nft_secs),
        );
    }
    for s in cp {
        for n in &s.notes {
            let _ = writeln!(md, "\n{}: {n}", count(s.services));
        }
    }
    let changes = cp
        .iter()
        .map(|s| s.api.change_ms.len().max(s.manifests.change_ms.len()))
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        md,
        "\n**One endpoint change** ({changes} changes at each size, each replacing one endpoint of \
         one slice, spread over the set). *write → map*: from writing the change (renaming the \
         rewritten 250-service file into the manifests directory, or the API write) to the log \
         line of the sync that wrote the map. *event → map*: the agent's own part, from the first \
         event of the change received (from inotify's read of the file, or from the watch) to the \
         map written. *programming*: translating the changed Service and writing its maps. The \
         agent's peak memory (VmHWM) is over its whole run: start, full sync and the changes.\n\n\
         | services | source | write → map p50 | p99 | event → map p50 | p99 | programming p99 | agent peak RSS |\n|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for s in cp {
        for (name, run) in [("manifests", &s.manifests), ("API", &s.api)] {
            let p =
                |v: &[f64], q| percentile(v, q).map_or("–".into(), |x| format!("{} ms", num(x)));
            let _ = writeln!(
                md,
                "| {} | {name} | {} | {} | {} | {} | {} | {} |",
                count(s.services),
                p(&run.change_ms, 50.0),
                p(&run.change_ms, 99.0),
                p(&run.event_ms, 50.0),
                p(&run.event_ms, 99.0),
                p(&run.change_program_ms, 99.0),
                mib(run.rss)
            );
        }
    }
    if let Some(png) = &plots.control {
        let _ = writeln!(md, "\n![One endpoint change vs. services]({png})");
    }
}

/// A Targets row's family: nothing for IPv4, ", IPv6".
fn family_suffix(family: Family) -> &'static str {
    match family {
        Family::V4 => "",
        Family::V6 => ", IPv6",
    }
}

/// Where ferry stands against the targets (measured, never asserted).
fn targets(md: &mut String, r: &Report) {
    let _ = writeln!(
        md,
        "\n## Targets\n\nMeasured against, not asserted.\n\n| target | goal | measured | |\n|---|---|---|---|"
    );
    let verdict = |ok: bool, by: String| {
        if ok {
            "met".to_owned()
        } else {
            format!("missed by {by}")
        }
    };
    // East-west, per family (IPv6 once it was measured).
    let ew_families: Vec<Family> = match r.eastwest.done() {
        Some(ew) if ew.points.iter().any(|p| p.family == Family::V6) => Family::ALL.to_vec(),
        _ => vec![Family::V4],
    };
    // Issue 14's goal: 0.99 × direct at the smallest and the largest N.
    const EW_GOAL: f64 = 0.99;
    for family in ew_families {
        let sizes: Vec<usize> = r.eastwest.done().map_or(vec![10_000], |ew| {
            let ns = ew.points.iter().filter(|p| p.family == family).map(|p| p.n);
            let (lo, hi) = (ns.clone().min().unwrap_or(0), ns.max().unwrap_or(0));
            if lo == hi { vec![hi] } else { vec![lo, hi] }
        });
        // The verdict on the median; the interval says how sure it is.
        let paired_goal = |c: Option<MedianCi>| match c {
            Some(c) => format!(
                "{:.3} × direct (median of {} pairs{}) | {}",
                c.median,
                c.n,
                if c.n > 1 {
                    format!(", CI {}", interval(&c))
                } else {
                    String::new()
                },
                // An interval holding the goal does not decide it either way.
                if c.n > 1 && c.lo < EW_GOAL && EW_GOAL <= c.hi {
                    format!(
                        "{}, not resolved (the interval holds {EW_GOAL})",
                        if c.median >= EW_GOAL { "met" } else { "missed" }
                    )
                } else {
                    verdict(
                        c.median >= EW_GOAL,
                        format!("{:.1} %", (EW_GOAL - c.median) * 100.0),
                    )
                }
            ),
            None => "– | ".into(),
        };
        for n in sizes {
            let row = match r.eastwest.done() {
                Some(ew) if ew.config.paired => paired_goal(ew_paired(&ew.points, n, family)),
                Some(ew) => {
                    let f = ew_metric(&ew.points, n, family, Contender::Ferry, conns);
                    let d = ew_metric(&ew.points, n, family, Contender::Direct, conns);
                    match ratio(f, d) {
                        Some(x) => format!(
                            "{x:.2} × direct | {}",
                            verdict(x >= EW_GOAL, format!("{:.0} %", (EW_GOAL - x) * 100.0))
                        ),
                        None => "– | ".into(),
                    }
                }
                None => "not measured | ".into(),
            };
            let over = family_suffix(family);
            let services = format!("{} service{}", count(n), if n == 1 { "" } else { "s" });
            let _ = writeln!(
                md,
                "| east-west connections/s at {services}{over} | ≥ {EW_GOAL} × direct pod IP | {row} |",
            );
            // The same goal over one backend: ferry's own cost, without the spreading.
            if let Some(ew) = r.eastwest.done().filter(|ew| ew.config.one_backend) {
                let row = paired_goal(ew_extra_paired(&ew.points, n, family, one_runs).0);
                let _ = writeln!(
                    md,
                    "| east-west connections/s at {services}{over}, one backend (ferry's own cost) | ≥ {EW_GOAL} × direct pod IP | {row} |",
                );
            }
            // And over both backends with direct spreading as the Service does.
            if let Some(ew) = r.eastwest.done().filter(|ew| ew.config.spread) {
                let row = paired_goal(ew_extra_paired(&ew.points, n, family, spread_runs).0);
                let _ = writeln!(
                    md,
                    "| east-west connections/s at {services}{over}, two backends spread alike (a random backend per connection on both sides) | ≥ {EW_GOAL} × direct pod IP | {row} |",
                );
            }
        }
    }
    // North-south, per family (IPv6 once it was in the run).
    let ns_families: Vec<Family> = match r.northsouth.done() {
        Some(ns)
            if ns.points.iter().any(|p| p.family == Family::V6)
                || ns.not_measured.iter().any(|u| u.family == Family::V6) =>
        {
            Family::ALL.to_vec()
        }
        _ => vec![Family::V4],
    };
    for family in ns_families {
        let row = match r.northsouth.done() {
            Some(ns) => {
                use super::northsouth::Contender as C;
                let get = |c| {
                    ns.points
                        .iter()
                        .find(|p| p.family == family && p.contender == c)
                        .and_then(|p| Summary::of(&p.gbits_per_sec))
                };
                let unmeasured = ns
                    .not_measured
                    .iter()
                    .find(|u| u.family == family && u.contender == C::Ferry);
                match (ratio(get(C::Ferry), get(C::Routing)), unmeasured) {
                    (Some(x), _) => format!(
                        "{x:.2} × plain routing | {}",
                        verdict(x >= 0.9, format!("{:.0} %", (0.9 - x) * 100.0))
                    ),
                    (None, Some(_)) => "not measured (see section 2) | ".into(),
                    (None, None) => "– | ".into(),
                }
            }
            None => "not measured | ".into(),
        };
        let over = family_suffix(family);
        let _ = writeln!(
            md,
            "| north-south throughput{over} | ≥ 0.9 × plain routing | {row} |"
        );
    }
    // TC's paths on ferry_tc_in / ferry_tc_out and XDP's on ferry_xdp (the rows whose path
    // starts so), per family (IPv6 once it was in the run). "XDP the same or lower": XDP is
    // held to TC's goals.
    let pc_families: Vec<Family> = match r.progcost.done() {
        Some(p) if p.has(Family::V6) => Family::ALL.to_vec(),
        _ => vec![Family::V4],
    };
    for &family in &pc_families {
        for (name, prefix, program, goal) in [
            ("TC hit path", "hit", "ferry_tc_in", 60.0),
            ("TC reply path", "reply", "ferry_tc_out", 60.0),
            ("TC miss path", "miss (new flow", "ferry_tc_in", 250.0),
            ("XDP hit path", "hit", "ferry_xdp", 60.0),
            ("XDP miss path", "miss (new flow", "ferry_xdp", 250.0),
        ] {
            let row = match r
                .progcost
                .done()
                .and_then(|p| p.find(prefix, program, family))
            {
                Some(c) => format!(
                    "{} ns (median at the VM's normal speed: §3) | {}",
                    num(c.median_ns),
                    verdict(
                        c.median_ns <= goal,
                        format!("{} ns", num(c.median_ns - goal))
                    )
                ),
                None => "not measured | ".into(),
            };
            let over = family_suffix(family);
            let _ = writeln!(md, "| {name}{over} | ≤ {goal:.0} ns per packet | {row} |");
        }
    }
    let flood = r.flood.done();
    let limited = flood.and_then(super::flood::xdp_generator_limited);
    let row = match (flood.and_then(super::flood::xdp_over_tc), limited) {
        // XDP forwarded (nearly) all it was offered: its packets/s are the generator's, a
        // floor of its capacity, and decide nothing unless they already reach the goal.
        (Some(x), Some(l)) if x < 2.0 => format!(
            "{x:.2} × ferry TC, but the generator was the limit: XDP forwarded {:.0} % of what \
             it was offered; the forwarding CPU's time per frame, TC / XDP: {} | not resolved \
             by packets/s{}",
            l.delivered * 100.0,
            l.tc_over_xdp_ns.map_or("–".into(), |t| format!("{t:.2} ×")),
            l.tc_over_xdp_ns.map_or(String::new(), |t| format!(
                "; by time per frame {}",
                verdict(t >= 2.0, format!("{:.2} ×", 2.0 - t))
            )),
        ),
        (Some(x), _) => format!(
            "{x:.2} × ferry TC | {}",
            verdict(x >= 2.0, format!("{:.2} ×", 2.0 - x))
        ),
        (None, _) => "not measured | ".into(),
    };
    let _ = writeln!(
        md,
        "| flood, packets/s forwarded by ferry XDP | ≥ 2 × ferry TC on the same path | {row} |"
    );
    // Issue 14: `ferry monitor` listening costs the east-west and north-south ratios ≤ 2 %.
    const MONITOR_GOAL: f64 = 0.98;
    let ew_cells: Vec<f64> = r.eastwest.done().map_or(Vec::new(), |ew| {
        ew.points
            .iter()
            .filter_map(|p| {
                let m = p.monitor.as_ref()?;
                monitor_ratio(&p.conns_per_sec, &m.conns_per_sec)
            })
            .collect()
    });
    let ns_cells: Vec<f64> = r.northsouth.done().map_or(Vec::new(), |ns| {
        ns.points
            .iter()
            .filter_map(|p| p.monitor.as_ref().map(|m| (p, m)))
            .flat_map(|(p, m)| {
                [
                    monitor_ratio(&p.gbits_per_sec, &m.gbits_per_sec),
                    monitor_ratio(&p.conns_per_sec, &m.conns_per_sec),
                ]
            })
            .flatten()
            .collect()
    });
    for (what, cells) in [
        ("east-west connections/s", &ew_cells),
        ("north-south Gbit/s and connections/s", &ns_cells),
    ] {
        let _ = writeln!(
            md,
            "| {what} with `ferry monitor` listening | ≥ {MONITOR_GOAL} × without, same rounds | {} |",
            monitor_target(cells, MONITOR_GOAL)
        );
    }
    // Control plane: the 10,000-service set (the size).
    let at10k = r
        .control
        .done()
        .and_then(|cp| cp.iter().find(|s| s.services == 10_000).or(cp.last()));
    let ms = |x: Option<f64>| x.map_or("–".into(), |x| format!("{} ms", num(x)));
    let control_row =
        |md: &mut String, target: &str, goal: &str, row: Option<(String, bool, String)>| {
            let row = match row {
                Some((measured, ok, by)) => format!("{measured} | {}", verdict(ok, by)),
                None => "not measured | ".into(),
            };
            let _ = writeln!(md, "| {target} | {goal} | {row} |");
        };
    control_row(
        md,
        "full sync, agent start → everything programmed",
        "≤ 1 s, either source",
        at10k.map(|s| {
            let worst = worst_of(s.api.full_secs, s.manifests.full_secs);
            (
                format!(
                    "API {}, manifests {} at {} / {}",
                    opt_secs(s.api.full_secs),
                    opt_secs(s.manifests.full_secs),
                    count(s.services),
                    count(s.endpoints)
                ),
                worst <= 1.0,
                format!("{} s", num(worst - 1.0)),
            )
        }),
    );
    control_row(
        md,
        "one endpoint change, event received → map written",
        "p99 ≤ 5 ms",
        at10k.map(|s| {
            let worst = worst_of(
                percentile(&s.api.event_ms, 99.0),
                percentile(&s.manifests.event_ms, 99.0),
            );
            (
                format!(
                    "API {}, manifests {}",
                    ms(percentile(&s.api.event_ms, 99.0)),
                    ms(percentile(&s.manifests.event_ms, 99.0))
                ),
                worst <= 5.0,
                format!("{} ms", num(worst - 5.0)),
            )
        }),
    );
    control_row(
        md,
        "one endpoint change, API write → map written",
        "p99 ≤ 30 ms",
        at10k.map(|s| {
            let p = percentile(&s.api.change_ms, 99.0);
            let v = p.unwrap_or(f64::INFINITY);
            (ms(p), v <= 30.0, format!("{} ms", num(v - 30.0)))
        }),
    );
    control_row(
        md,
        "one endpoint change, file renamed in → map written",
        "p99 ≤ 50 ms",
        at10k.map(|s| {
            let p = percentile(&s.manifests.change_ms, 99.0);
            let v = p.unwrap_or(f64::INFINITY);
            (ms(p), v <= 50.0, format!("{} ms", num(v - 50.0)))
        }),
    );
    control_row(
        md,
        "agent peak RSS (VmHWM), whole run",
        "≤ 64 MiB, either source",
        at10k.map(|s| {
            let worst = s
                .api
                .rss
                .max(s.manifests.rss)
                .map_or(f64::INFINITY, |b| b as f64 / 1048576.0);
            (
                format!("API {}, manifests {}", mib(s.api.rss), mib(s.manifests.rss)),
                worst <= 64.0,
                format!("{:.1} MiB", worst - 64.0),
            )
        }),
    );
}

/// The larger of two measurements; infinite when either is missing.
fn worst_of(a: Option<f64>, b: Option<f64>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => a.max(b),
        _ => f64::INFINITY,
    }
}

fn method(md: &mut String) {
    let _ = writeln!(
        md,
        "\n## Method\n\n\
         - **Isolation.** Everything runs in lab network namespaces (`fy<id>-*`) built by the \
           test library; none is linked to the root namespace, all addresses live inside them, and \
           kube-proxy's rules are loaded with `nsenter --net=/run/netns/fy<id>-...` into lab \
           namespaces only. Clients, servers and loads are bounded in time; the lab is removed on \
           exit, on failure and on Ctrl-C.\n\
         - **East-west topology.** Each contender has its own client namespace behind its own \
           router namespace (the client's node as far as rules go), and all routers lead to the \
           node namespace whose bridge holds the two backend pods. The paths have the same hops; \
           kube-proxy's rules and the conntrack they need live only in their contender's router, \
           so no contender pays for another's rules. ferry's client alone is in the lab cgroup \
           where ferry's socket hooks are attached; the others are outside it. The topology is \
           dual-stack (every address has its IPv6 twin, `10.246.1.2` → `fd00:10:246:1::2`), so the \
           IPv6 rows run over the same namespaces, links and hops.\n\
         - **ferry's datapath** is programmed by the agent from manifests; the agent is then \
           stopped (the datapath stays in the kernel, pinned, as designed) so that no control \
           plane runs during the rounds, as none runs for the kube-proxy contenders.\n\
         - **kube-proxy's layouts** are generated by the bench in kube-proxy's exact structure \
           (tests/src/bench/kubeproxy.rs, whose unit tests check the chain names against \
           kube-proxy's own test expectations): iptables mode's `KUBE-SERVICES` → `KUBE-SVC-<hash>` \
           (`-m statistic --mode random --probability`) → `KUBE-SEP-<hash>` (DNAT), jumps from \
           PREROUTING/OUTPUT, `KUBE-MARK-MASQ`/`KUBE-POSTROUTING` and the filter-table chains; \
           nftables mode's `table ip kube-proxy` with the `service-ips` verdict map → service chains \
           (`numgen random mod N vmap`) → endpoint chains, with its base chains and maps. Over \
           IPv6 the same layouts as kube-proxy's IPv6 proxiers write them: `ip6tables-restore` \
           with `[ip]:port` endpoints (in the chain hashes too), and `table ip6 kube-proxy` with \
           `ip6 daddr` and `ipv6_addr` sets and maps. Debian \
           12's `iptables` is iptables-nft (the nf_tables backend), what current distributions and \
           kube-proxy images use.\n\
         - **Load tool: wrk** (Debian's package). It is a real, event-driven HTTP load generator \
           whose `Connection: close` mode measures connection setup (the per-connection cost where \
           the contenders differ: a socket-hook lookup vs. netfilter's NAT chains on the first \
           packet) and whose `--latency` gives the request latency percentiles on a kept-alive \
           connection (the per-packet cost: nothing for ferry, conntrack for kube-proxy). The \
           backends run a small keep-alive HTTP server (`ferry-bench serve`) so the server is not \
           the bottleneck.\n\
         - **Flood generator** (section 5) is an XDP program in the lab's segment namespace \
           that writes each UDP frame whole and redirects it to the forwarding node's peer \
           veth, whose `ndo_xdp_xmit` puts it in the node's receive ring as a NIC driver does; \
           it runs from BPF_PROG_RUN's live frames, or, where the kernel refuses them, as the \
           native XDP of a veth pair fed through an AF_PACKET socket (relay mode). Its redirect \
           is a broadcast over a devmap whose entries all hold that veth, so each frame it \
           writes is sent {fanout} times in a row, handed over in bursts of up to 16: the \
           node's ring gets batches, as from a NIC under load, rather than one frame per \
           wake-up of its NAPI thread, and one generator CPU offers more than a forwarding CPU \
           takes. Every contender gets the same frames: {flows} flows, each in runs of \
           {fanout} identical frames.\n\
         - **Program cost** uses BPF_PROG_TEST_RUN on the real object loaded into the kernel \
           (verifier included), in a namespace of its own, with maps filled as the agent fills them.\n\
         - **Control plane** runs each source in a fresh lab; kube-proxy's restores go into empty \
           lab namespaces.\n\
         - `cargo xtask bench --quick` is the smoke run `cargo xtask test` makes: N = 1 and 100 \
           (IPv6 at 100 only), one 1-second round, 100 services in the control-plane section; it writes to a \
           temporary directory, never over this file.",
        fanout = super::xdpgen::FANOUT,
        flows = num(f64::from(super::xdpgen::FLOWS)),
    );
}

/// Said of a section run with `ferry-bench run --monitor`.
fn monitor_note(monitor: bool) -> &'static str {
    if monitor {
        " ferry was measured twice each round, without and with `ferry monitor -o json` listening \
         (its output to /dev/null), the order alternating round by round; the main tables are its \
         runs without, the monitor table sets the two side by side."
    } else {
        ""
    }
}

/// One row of a monitor table: the metric without and with the monitor, and their ratio (the
/// median of the rounds' ratios, each pair run back to back; else the medians' ratio).
fn monitor_cells(off: &[f64], on: &[f64]) -> String {
    let r = monitor_ratio(off, on);
    format!(
        "{} | {} | {}",
        cell(Summary::of(off)),
        cell(Summary::of(on)),
        ratio_cell(r)
    )
}

/// With / without the monitor: the median of the rounds' paired ratios, else the medians'.
fn monitor_ratio(off: &[f64], on: &[f64]) -> Option<f64> {
    paired_ratio(on, off)
        .map(|r| r.median)
        .or(ratio(Summary::of(on), Summary::of(off)))
}

/// The Targets row of the monitor's cost: the median of a section's with / without cells
/// (each itself a median of paired rounds; single cells swing by the VM's noise), with the
/// range of the cells.
fn monitor_target(cells: &[f64], goal: f64) -> String {
    let Some(s) = Summary::of(cells) else {
        return "not measured (`--monitor`) | ".into();
    };
    let verdict = if s.median >= goal {
        "met".to_owned()
    } else {
        format!("missed by {:.0} %", (goal - s.median) * 100.0)
    };
    format!(
        "{:.2} × without, median of {} cells ({:.2}–{:.2}) | {verdict}",
        s.median,
        cells.len(),
        s.min,
        s.max
    )
}

/// East-west: ferry without and with the monitor, the same rounds. `paired`: the two short
/// runs of a round went back to back, and the with / without of connections/s is the median of
/// the pairs' ratios with its interval.
fn ew_monitor(md: &mut String, points: &[Point], sizes: &[usize], paired: bool) {
    if !points.iter().any(|p| p.monitor.is_some()) {
        return;
    }
    let head = if paired {
        "with / without, paired [95 % CI]"
    } else {
        "with / without"
    };
    let _ = writeln!(
        md,
        "\n**ferry with `ferry monitor` listening, same rounds**\n\n| services (N) | connections/s without | with | {head} | p50 µs without | with | with / without |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &n in sizes {
        for family in ew_families(points, n) {
            let Some(p) = point(points, n, family, Contender::Ferry) else {
                continue;
            };
            let Some(m) = &p.monitor else {
                continue;
            };
            let conns = if paired {
                format!(
                    "{} | {} | {}",
                    cell(Summary::of(&p.conns_per_sec)),
                    cell(Summary::of(&m.conns_per_sec)),
                    paired_cell(paired_ratio_ci(
                        &m.conns_per_sec,
                        &p.conns_per_sec,
                        CONFIDENCE
                    ))
                )
            } else {
                monitor_cells(&p.conns_per_sec, &m.conns_per_sec)
            };
            let _ = writeln!(
                md,
                "| {}, {} | {conns} | {} |",
                count(n),
                family.label(),
                monitor_cells(&p.p50_us, &m.p50_us),
            );
        }
    }
    if paired {
        let _ = writeln!(
            md,
            "\nEach round's ferry runs without and with the monitor went back to back (direct, \
             ferry, ferry + monitor, then the reverse), so with / without is paired as ferry / \
             direct is."
        );
    }
    let failed: u64 = points
        .iter()
        .filter_map(|p| p.monitor.as_ref())
        .map(|m| m.failed_runs)
        .sum();
    if failed > 0 {
        let _ = writeln!(
            md,
            "\nRuns with the monitor left out (it did not start): {failed}."
        );
    }
}

/// East-west: what the lab's programs cost each contender (`--bpf-stats`): run time per
/// short connection and per kept-alive request.
fn ew_programs(md: &mut String, points: &[Point], sizes: &[usize]) {
    if !points.iter().any(|p| !p.programs.is_empty()) {
        return;
    }
    let _ = writeln!(
        md,
        "\n**Program run time per connection (BPF_ENABLE_STATS, summed over the rounds)**: the \
         programs ferry attached in the lab (its TC programs sit on the node's devices, which \
         every contender's packets cross; its socket hooks see ferry's client and the servers), \
         while each contender's short connections ran, then per request of its kept-alive \
         connection. Run time includes the statistics' own clock reads (~20-40 ns per run). \
         The statistics are on only in runs of their own, one short run per contender in each \
         round with kept-alive runs, and in those kept-alive runs: the short runs compared \
         above ran with them off, as the clock reads would tax ferry's four program runs per \
         connection against direct's two.\n\n\
         | services (N) | contender | program | runs / connection | ns / run | ns / connection | runs / kept request | ns / kept request |\n\
         |---:|---|---|---:|---:|---:|---:|---:|"
    );
    for &n in sizes {
        for family in ew_families(points, n) {
            for c in Contender::ALL {
                let Some(p) = point(points, n, family, c) else {
                    continue;
                };
                let mut names: Vec<&str> = p
                    .programs
                    .iter()
                    .chain(&p.programs_kept)
                    .map(|x| x.name.as_str())
                    .collect();
                names.sort_unstable();
                names.dedup();
                for name in names {
                    let per = |list: &[super::bpfstats::ProgCost], per: u64| {
                        let x = list.iter().find(|x| x.name == name);
                        let runs = x.map_or(0, |x| x.runs);
                        let ns = x.map_or(0, |x| x.ns);
                        let d = per.max(1) as f64;
                        (
                            runs as f64 / d,
                            if runs > 0 {
                                ns as f64 / runs as f64
                            } else {
                                f64::NAN
                            },
                            ns as f64 / d,
                        )
                    };
                    let (r, nr, nc) = per(&p.programs, p.connections);
                    let (rk, _, nk) = per(&p.programs_kept, p.requests_kept);
                    let _ = writeln!(
                        md,
                        "| {}, {} | {} | `{name}` | {:.2} | {} | {} | {:.2} | {} |",
                        count(n),
                        family.label(),
                        c.label(),
                        r,
                        num(nr),
                        num(nc),
                        rk,
                        num(nk),
                    );
                }
            }
        }
    }
}

/// North-south: ferry without and with the monitor, the same rounds.
fn ns_monitor(md: &mut String, ns: &super::northsouth::Results) {
    use super::northsouth::Contender as C;
    let with: Vec<_> = ns
        .points
        .iter()
        .filter(|p| p.contender == C::Ferry)
        .filter_map(|p| p.monitor.as_ref().map(|m| (p, m)))
        .collect();
    if with.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n**ferry with `ferry monitor` listening, same rounds**\n\n| | Gbit/s without | with | with / without | connections/s without | with | with / without |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for (p, m) in &with {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            p.family.label(),
            monitor_cells(&p.gbits_per_sec, &m.gbits_per_sec),
            monitor_cells(&p.conns_per_sec, &m.conns_per_sec),
        );
    }
    if with.iter().any(|(p, _)| !p.programs.is_empty()) {
        let _ = writeln!(
            md,
            "\n**node1's programs per short connection, without and with the monitor** \
             (BPF_ENABLE_STATS, summed over the rounds; the machine's load moves wall-clock \
             rates far more than the monitor can, the programs' own run time does not)\n\n\
             | | program | ns / connection without | with | with / without |\n|---|---|---:|---:|---:|"
        );
        for (p, m) in &with {
            let per = |list: &[super::bpfstats::ProgCost], name: &str, conns: u64| {
                list.iter()
                    .find(|x| x.name == name)
                    .map_or(0.0, |x| x.ns as f64 / conns.max(1) as f64)
            };
            let mut names: Vec<&str> = p.programs.iter().map(|x| x.name.as_str()).collect();
            names.sort_unstable();
            for name in names {
                let (off, on) = (
                    per(&p.programs, name, p.connections),
                    per(&m.programs, name, m.connections),
                );
                let _ = writeln!(
                    md,
                    "| {} | `{name}` | {} | {} | {} |",
                    p.family.label(),
                    num(off),
                    num(on),
                    ratio_cell((off > 0.0).then(|| on / off)),
                );
            }
        }
    }
    let failed: u64 = ns
        .points
        .iter()
        .filter_map(|p| p.monitor.as_ref())
        .map(|m| m.failed_runs)
        .sum();
    if failed > 0 {
        let _ = writeln!(
            md,
            "\nRuns with the monitor left out (it did not start, or a load tool failed): {failed}."
        );
    }
}

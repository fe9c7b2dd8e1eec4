//! `ferry monitor`: the datapath's events as they happen (drops with their
//! reason, new flows with their backend, ICMP errors translated, port
//! unreachables sent), one line or JSON object each.
//!
//! It holds the lease that turns the programs' events on while it runs
//! (datapath::events::Lease) and releases it on exit (SIGINT and SIGTERM
//! included); the running agent needs no restart. Service names come from
//! the pinned maps (rev-NAT id -> frontend) joined with the agent's status
//! (frontend -> Service), as `ferry services` shows them.

use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use agent_common::{
    event::{Event, RENEW_NS, kind},
    stats::Counter,
};
use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::{EventType, MonitorArgs, MonitorOutput},
    datapath::{
        Maps,
        events::{self, EventView, Lease},
        snapshot::KernelState,
    },
    model::{FrontendKey, Protocol, Scope},
    paths::PinDir,
};

/// How often names are re-read when an event names a frontend not known
/// yet (at most).
const NAMES_REFRESH: Duration = Duration::from_secs(2);

pub async fn run(args: &MonitorArgs) -> anyhow::Result<()> {
    let pins = PinDir::new(&args.bpffs);
    let maps = Maps::open_pinned(&pins)
        .with_context(|| format!("reading ferry's maps under {}", args.bpffs.display()))?;
    let mut ring = events::open_ring(&pins)?;
    // What a previous monitor left unread is not this one's.
    while ring.next().is_some() {}
    let mut lease = Lease::acquire(&pins)?;
    let mut names = Names::new((!args.no_agent).then_some(args.agent));
    names.refresh(&maps);
    let wall_offset = events::realtime_ns().saturating_sub(events::monotonic_ns());
    let lost_at_start = lost(&maps);
    let mut reported_lost = 0;
    let mut printed = 0u64;

    // SAFETY: the AsyncFd owns the ring, which owns its descriptor: it
    // stays open while registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .context("watching the event ring buffer")?;
    let mut renew = tokio::time::interval(Duration::from_nanos(RENEW_NS));
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            _ = interrupt.recv() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
            _ = renew.tick() => {
                if let Err(e) = lease.renew() {
                    break Err(e.into());
                }
                let n = lost(&maps).saturating_sub(lost_at_start);
                if n > reported_lost {
                    eprintln!(
                        "ferry monitor: {} events lost (the ring buffer was full), {n} in all",
                        n - reported_lost
                    );
                    reported_lost = n;
                }
            }
            ready = fd.readable_mut() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => break Err(e.into()),
                };
                let mut lines = Vec::new();
                while let Some(item) = guard.get_inner_mut().next() {
                    let Some(e) = events::parse(&item) else {
                        continue;
                    };
                    drop(item);
                    if let Some(line) = render(&e, args, &mut names, &maps, wall_offset) {
                        lines.push(line);
                    }
                }
                guard.clear_ready();
                let written = lines
                    .iter()
                    .try_for_each(|l| writeln!(out, "{l}"))
                    .and_then(|()| out.flush());
                // A closed stdout (`| head`) ends the monitor.
                if written.is_err() {
                    break Ok(());
                }
                printed += lines.len() as u64;
            }
        }
    };
    lease.release();
    let n = lost(&maps).saturating_sub(lost_at_start);
    if n > 0 {
        eprintln!("ferry monitor: {printed} events shown, {n} lost (the ring buffer was full)");
    }
    result
}

/// Events lost so far (all CPUs).
fn lost(maps: &Maps) -> u64 {
    maps.stats
        .get(&(Counter::EventLost as u32), 0)
        .map(|v| v.iter().sum())
        .unwrap_or(0)
}

/// The event as its line, or None when a filter leaves it out.
fn render(
    e: &Event,
    args: &MonitorArgs,
    names: &mut Names,
    maps: &Maps,
    wall_offset: u64,
) -> Option<String> {
    if !args.types.is_empty() && !args.types.iter().any(|t| matches(*t, e.kind)) {
        return None;
    }
    let (orig, nat) = events::tuples(e);
    let ends = [
        Some(orig.src),
        Some(orig.dst),
        nat.map(|t| t.src),
        nat.map(|t| t.dst),
    ];
    if let Some(a) = args.address
        && !ends.iter().flatten().any(|s| s.0 == a)
    {
        return None;
    }
    if let Some(p) = args.port
        && !ends.iter().flatten().any(|s| s.1 == p)
    {
        return None;
    }
    let mut v = events::view(e, wall_offset);
    let (frontend, service) = names.of(e, orig.dst.0, orig.dst.1, maps);
    if let Some(want) = &args.service
        && service.as_deref() != Some(want.as_str())
    {
        return None;
    }
    v.frontend = frontend;
    v.service = service;
    Some(match args.output {
        MonitorOutput::Json => serde_json::to_string(&v).ok()?,
        MonitorOutput::Text => text(&v),
    })
}

fn matches(t: EventType, k: u8) -> bool {
    match t {
        EventType::Drop => k == kind::DROP,
        EventType::Flow => k == kind::NEW_FLOW,
        EventType::Icmp => k == kind::ICMP_TRANSLATED || k == kind::PORT_UNREACHABLE,
    }
}

/// `TIME KIND REASON PROTO SRC -> DST [=> NAT-SRC -> NAT-DST (MODE)] SERVICE`.
fn text(v: &EventView) -> String {
    let proto = v.protocol.map_or("?".to_string(), |p| p.to_string());
    let mut line = format!(
        "{} {:<16} {:<21} {:<4} {} -> {}",
        v.time,
        v.kind,
        v.reason.as_deref().unwrap_or("-"),
        proto,
        v.src,
        v.dst
    );
    if let (Some(s), Some(d)) = (&v.nat_src, &v.nat_dst) {
        line.push_str(&format!(" => {s} -> {d}"));
        if let Some(m) = &v.mode {
            line.push_str(&format!(" ({m})"));
        }
    }
    let who = v
        .service
        .as_deref()
        .or(v.frontend.as_deref())
        .unwrap_or("-");
    line.push_str(&format!(" service={who} via={}:{}", v.program, v.ifindex));
    line
}

/// Frontends by rev-NAT id and by address, and the Services the agent
/// names for them.
struct Names {
    agent: Option<SocketAddr>,
    by_rev: HashMap<u16, FrontendKey>,
    by_addr: HashMap<(IpAddr, u16, Protocol), FrontendKey>,
    services: HashMap<String, String>,
    read_at: Option<Instant>,
}

impl Names {
    fn new(agent: Option<SocketAddr>) -> Names {
        Names {
            agent,
            by_rev: HashMap::new(),
            by_addr: HashMap::new(),
            services: HashMap::new(),
            read_at: None,
        }
    }

    fn refresh(&mut self, maps: &Maps) {
        let st = KernelState::read(maps);
        self.by_rev.clear();
        self.by_addr.clear();
        // External scope first: the programs that emit serve it (an
        // internal twin of the same frontend shares its rev-NAT id).
        for (k, f) in st
            .frontends
            .iter()
            .filter(|(k, _)| k.scope == Scope::External)
        {
            self.by_rev.entry(f.value.rev_nat_id).or_insert(*k);
            self.by_addr.insert((k.ip, k.port, k.proto), *k);
        }
        for (k, f) in &st.frontends {
            self.by_rev.entry(f.value.rev_nat_id).or_insert(*k);
            self.by_addr.entry((k.ip, k.port, k.proto)).or_insert(*k);
        }
        if let Some(status) = self.agent.and_then(super::services::agent_status) {
            self.services = status
                .frontends
                .into_iter()
                .map(|f| (f.frontend, f.service))
                .collect();
        }
        self.read_at = Some(Instant::now());
    }

    /// The frontend (text) and Service of event `e`, whose original
    /// destination is `ip`:`port`.
    fn of(
        &mut self,
        e: &Event,
        ip: IpAddr,
        port: u16,
        maps: &Maps,
    ) -> (Option<String>, Option<String>) {
        let proto = Protocol::from_number(e.proto);
        let find = |n: &Names| match (e.rev_nat_id, proto) {
            (0, Some(p)) => n.by_addr.get(&(ip, port, p)).copied(),
            (0, None) => None,
            (id, _) => n.by_rev.get(&id).copied(),
        };
        let mut key = find(self);
        let stale = self.read_at.is_none_or(|t| t.elapsed() >= NAMES_REFRESH);
        let unnamed = key.is_some_and(|k| !self.services.contains_key(&k.to_string()));
        if (key.is_none() || (unnamed && self.agent.is_some())) && stale {
            self.refresh(maps);
            key = find(self);
        }
        let Some(key) = key else {
            return (None, None);
        };
        let text = key.to_string();
        let service = self.services.get(&text).cloned();
        (Some(text), service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_flow_reads_as_one_line_with_its_translation_and_service() {
        let v = EventView {
            time: "2026-12-06T18:00:00.000001Z".into(),
            ts_ns: 1,
            kind: "new_flow".into(),
            reason: None,
            family: "ipv4".into(),
            protocol: Some(Protocol::Tcp),
            program: "tc_in".into(),
            ifindex: 2,
            src: "172.18.0.100:40000".into(),
            dst: "172.18.0.11:30080".into(),
            nat_src: Some("172.18.0.11:63010".into()),
            nat_dst: Some("10.244.1.2:8080".into()),
            mode: Some("snat".into()),
            backend_id: 3,
            rev_nat_id: 6,
            frontend: Some("172.18.0.11:30080/TCP".into()),
            service: Some("default/web".into()),
        };
        assert_eq!(
            text(&v),
            "2026-12-06T18:00:00.000001Z new_flow         -                     TCP  \
             172.18.0.100:40000 -> 172.18.0.11:30080 => 172.18.0.11:63010 -> 10.244.1.2:8080 \
             (snat) service=default/web via=tc_in:2"
        );
        let unnamed = EventView {
            service: None,
            nat_src: None,
            nat_dst: None,
            ..v
        };
        assert!(text(&unnamed).ends_with("service=172.18.0.11:30080/TCP via=tc_in:2"));
    }

    #[test]
    fn types_select_their_kinds() {
        assert!(matches(EventType::Drop, kind::DROP));
        assert!(!matches(EventType::Drop, kind::NEW_FLOW));
        assert!(matches(EventType::Flow, kind::NEW_FLOW));
        assert!(matches(EventType::Icmp, kind::ICMP_TRANSLATED));
        assert!(matches(EventType::Icmp, kind::PORT_UNREACHABLE));
        assert!(!matches(EventType::Icmp, kind::DROP));
    }
}

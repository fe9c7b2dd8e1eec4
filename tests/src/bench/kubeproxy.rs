//! kube-proxy's two rule layouts for a service set, generated the way kube-proxy writes them,
//! so that the bench can load them into a lab namespace and compare ferry against them.
//!
//! - iptables mode (`pkg/proxy/iptables`): the nat table's `KUBE-SERVICES` chain, jumped to
//!   from PREROUTING and OUTPUT, holds one rule per service port matching its ClusterIP and
//!   port and jumping to `KUBE-SVC-<hash>`; that chain marks off-cluster sources for
//!   masquerade (`KUBE-MARK-MASQ`) and picks one `KUBE-SEP-<hash>` chain per endpoint with
//!   `-m statistic --mode random --probability 1/(n-i)`; each `KUBE-SEP-*` marks hairpin
//!   traffic and DNATs. `KUBE-POSTROUTING` masquerades marked packets. Chain hashes are
//!   kube-proxy's: base32(sha256(servicePortName + protocol [+ endpoint]))[:16].
//! - nftables mode (`pkg/proxy/nftables`): table `ip kube-proxy`, whose `services` chain looks
//!   the destination up in the `service-ips` verdict map (`ip daddr . meta l4proto . th dport`)
//!   and jumps to `service-<hash>-ns/name/tcp/port`, which picks an endpoint chain with
//!   `numgen random mod N vmap`; `endpoint-<hash>-...__ip/port` DNATs. The base chains and maps
//!   are kube-proxy's `baseRules`.
//!
//!
//! A dual-stack node runs one proxier per family, each writing its own rules with the same
//! layout: iptables mode's IPv6 proxier writes the same chains with `ip6tables-restore`
//! (endpoints `[ip]:port`, in its chain hashes too, sources `/128`), nftables mode's writes
//! table `ip6 kube-proxy` (`ip6 daddr`, `ipv6_addr` sets and maps, endpoint chain names with
//! the address's colons turned into dots). Every generator here takes the family and renders
//! that family's view of the services ([`Svc::view`]); services without an address of the
//! family are left out, as that proxier leaves them out.
//!
//! Both are only ever loaded inside lab namespaces (`nsenter --net=/run/netns/fy<id>-...`).

use std::{fmt::Write as _, net::IpAddr, net::SocketAddr};

use ring::digest;

use super::{Family, synth::Svc};

/// The pod CIDR kube-proxy is configured with (`--cluster-cidr`): sources outside it are
/// masqueraded. The bench's clients are inside it, like pods.
pub const CLUSTER_CIDR: &str = "10.244.0.0/14";
/// The service CIDR (nftables mode drops traffic to unallocated ClusterIPs in it).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The IPv6 pod CIDR: the twins of [`CLUSTER_CIDR`] (`fd00:10:244::` to `fd00:10:247:ffff::`).
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/46";
/// The IPv6 service CIDR: the twins of [`SERVICE_CIDR`] ([`super::synth::cluster_ip6`]).
pub const SERVICE_CIDR6: &str = "fd00:96::/108";

/// What differs between a family's rules.
struct Fam {
    /// The tool's word for the family (nft table family, match keyword): `ip` / `ip6`.
    ipx: &'static str,
    /// nft's address type.
    addr_type: &'static str,
    cluster_cidr: &'static str,
    service_cidr: &'static str,
    /// A host prefix: `/32` / `/128`.
    host: &'static str,
}

fn fam(family: Family) -> Fam {
    match family {
        Family::V4 => Fam {
            ipx: "ip",
            addr_type: "ipv4_addr",
            cluster_cidr: CLUSTER_CIDR,
            service_cidr: SERVICE_CIDR,
            host: "/32",
        },
        Family::V6 => Fam {
            ipx: "ip6",
            addr_type: "ipv6_addr",
            cluster_cidr: CLUSTER_CIDR6,
            service_cidr: SERVICE_CIDR6,
            host: "/128",
        },
    }
}

/// One family's view of one service port: its ClusterIP and its endpoints.
struct View<'a> {
    s: &'a Svc,
    ip: IpAddr,
    endpoints: Vec<IpAddr>,
}

impl View<'_> {
    /// kube-proxy's endpoint strings (`net.JoinHostPort`): `ip:port`, `[ipv6]:port`.
    fn endpoint_strings(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.s.target_port).to_string())
            .collect()
    }
}

fn views(svcs: &[Svc], family: Family) -> Vec<View<'_>> {
    svcs.iter()
        .filter_map(|s| {
            let (ip, endpoints) = s.view(family)?;
            Some(View { s, ip, endpoints })
        })
        .collect()
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// base32 (RFC 4648, standard alphabet) of sha256(`s`).
fn sha256_base32(s: &str) -> String {
    let hash = digest::digest(&digest::SHA256, s.as_bytes());
    let bytes = hash.as_ref();
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// `KUBE-SVC-<hash>` (iptables `servicePortChainName`).
pub fn svc_chain(s: &Svc) -> String {
    format!(
        "KUBE-SVC-{}",
        &sha256_base32(&format!("{}tcp", s.port_name_string()))[..16]
    )
}

/// `KUBE-SEP-<hash>` (iptables `servicePortEndpointChainName`).
pub fn sep_chain(s: &Svc, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        &sha256_base32(&format!("{}tcp{endpoint}", s.port_name_string()))[..16]
    )
}

/// `HASH-ns/name/tcp/port` (nftables `servicePortChainNameBase`).
fn nft_base(s: &Svc) -> String {
    let name = format!("{}/{}/tcp/{}", s.namespace, s.name, s.port_name);
    format!("{}-{name}", &sha256_base32(&name)[..8])
}

/// `HASH-ns/name/tcp/port__ip/port` (nftables `servicePortEndpointChainNameBase`; an IPv6
/// address's colons become dots, which chain names allow).
fn nft_ep_base(s: &Svc, ip: &str, port: u16) -> String {
    let ip = ip.replace(':', ".");
    let name = format!(
        "{}/{}/tcp/{}__{ip}/{port}",
        s.namespace, s.name, s.port_name
    );
    format!("{}-{name}", &sha256_base32(&name)[..8])
}

/// The `iptables-restore` input kube-proxy's iptables mode writes for `svcs` (a full sync:
/// the filter and nat tables, base chains and jumps included).
pub fn iptables_restore(svcs: &[Svc]) -> String {
    restore(svcs, Family::V4)
}

/// The `ip6tables-restore` input kube-proxy's IPv6 proxier writes for the IPv6 side of `svcs`
/// (the same layout as [`iptables_restore`]).
pub fn ip6tables_restore(svcs: &[Svc]) -> String {
    restore(svcs, Family::V6)
}

/// `iptables-restore` or `ip6tables-restore` input: `family`'s view of `svcs`.
pub fn restore(svcs: &[Svc], family: Family) -> String {
    let f = fam(family);
    let svcs = views(svcs, family);
    let mut t = String::with_capacity(svcs.len() * 1200 + 4096);
    t.push_str(
        "*filter\n\
         :KUBE-SERVICES - [0:0]\n\
         :KUBE-EXTERNAL-SERVICES - [0:0]\n\
         :KUBE-FORWARD - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-PROXY-FIREWALL - [0:0]\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n\
         *nat\n\
         :KUBE-SERVICES - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n\
         :KUBE-MARK-MASQ - [0:0]\n",
    );
    for v in &svcs {
        let _ = writeln!(t, ":{} - [0:0]", svc_chain(v.s));
        for ep in v.endpoint_strings() {
            let _ = writeln!(t, ":{} - [0:0]", sep_chain(v.s, &ep));
        }
    }
    t.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    for v in &svcs {
        let _ = writeln!(
            t,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {} --dport {} -j {}",
            v.s.port_name_string(),
            v.ip,
            v.s.port,
            svc_chain(v.s)
        );
    }
    t.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    for v in &svcs {
        let s = v.s;
        let name = s.port_name_string();
        let svc = svc_chain(s);
        let _ = writeln!(
            t,
            "-A {svc} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {} --dport {} ! -s {} -j KUBE-MARK-MASQ",
            v.ip, s.port, f.cluster_cidr
        );
        let eps = v.endpoint_strings();
        let n = eps.len();
        for (i, ep) in eps.iter().enumerate() {
            let sep = sep_chain(s, ep);
            if i + 1 < n {
                let p = 1.0 / (n - i) as f64;
                let _ = writeln!(
                    t,
                    "-A {svc} -m comment --comment \"{name} -> {ep}\" -m statistic --mode random --probability {p:.10} -j {sep}"
                );
            } else {
                let _ = writeln!(
                    t,
                    "-A {svc} -m comment --comment \"{name} -> {ep}\" -j {sep}"
                );
            }
        }
        for (ip, ep) in v.endpoints.iter().zip(&eps) {
            let sep = sep_chain(s, ep);
            let _ = writeln!(
                t,
                "-A {sep} -m comment --comment \"{name}\" -s {ip}{} -j KUBE-MARK-MASQ\n\
                 -A {sep} -m comment --comment \"{name}\" -m tcp -p tcp -j DNAT --to-destination {ep}",
                f.host
            );
        }
    }
    t.push_str("COMMIT\n");
    t
}

/// `KUBE-EXT-<hash>` / `KUBE-SVL-<hash>` (the external and local-endpoints chains).
fn ext_chain(s: &Svc) -> String {
    svc_chain(s).replacen("KUBE-SVC-", "KUBE-EXT-", 1)
}

fn svl_chain(s: &Svc) -> String {
    svc_chain(s).replacen("KUBE-SVC-", "KUBE-SVL-", 1)
}

/// The `iptables-restore` input for one LoadBalancer service with externalTrafficPolicy
/// Local whose endpoints are all on this node (kube-proxy's `KUBE-EXT-*` → `KUBE-SVL-*`
/// layout, beside its cluster-IP chains); with an IPv6 `lb_ip`, the `ip6tables-restore`
/// input of the service's IPv6 side (empty if it has none).
pub fn iptables_restore_lb_local(s: &Svc, lb_ip: IpAddr) -> String {
    let family = Family::of(lb_ip);
    let f = fam(family);
    let Some(v) = views(std::slice::from_ref(s), family).pop() else {
        return String::new();
    };
    let base = restore(std::slice::from_ref(s), family);
    let (ext, svl, name) = (ext_chain(s), svl_chain(s), s.port_name_string());
    let extra_chains = format!(":{ext} - [0:0]\n:{svl} - [0:0]\n");
    let mut rules = format!(
        "-A KUBE-SERVICES -m comment --comment \"{name} loadbalancer IP\" -m tcp -p tcp -d {lb_ip} --dport {} -j {ext}\n\
         -A {ext} -m comment --comment \"pod traffic for {name} external destinations\" -s {cluster_cidr} -j {svc}\n\
         -A {ext} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ\n\
         -A {ext} -m comment --comment \"route LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j {svc}\n\
         -A {ext} -j {svl}\n",
        s.port,
        svc = svc_chain(s),
        cluster_cidr = f.cluster_cidr
    );
    let eps = v.endpoint_strings();
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let sep = sep_chain(s, ep);
        if i + 1 < n {
            let p = 1.0 / (n - i) as f64;
            let _ = writeln!(
                rules,
                "-A {svl} -m comment --comment \"{name} -> {ep}\" -m statistic --mode random --probability {p:.10} -j {sep}"
            );
        } else {
            let _ = writeln!(
                rules,
                "-A {svl} -m comment --comment \"{name} -> {ep}\" -j {sep}"
            );
        }
    }
    // Chains are declared after the nat table's header; the rules go before its COMMIT. The
    // LB rule must precede KUBE-SERVICES' last (nodeports) rule.
    let nodeports = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports;";
    let base = base.replacen(
        ":KUBE-MARK-MASQ - [0:0]\n",
        &format!(":KUBE-MARK-MASQ - [0:0]\n{extra_chains}"),
        1,
    );
    let at = base.rfind(nodeports).unwrap_or(base.len());
    let mut out = String::with_capacity(base.len() + rules.len());
    out.push_str(&base[..at]);
    out.push_str(&rules);
    out.push_str(&base[at..]);
    out
}

/// The `nft -f` input kube-proxy's nftables mode amounts to for `svcs` (its `baseRules` plus
/// one service chain, one endpoint chain per endpoint, and the map elements). It first
/// deletes a `kube-proxy` table left from an earlier load, in the same transaction.
/// `node_ip` goes into `nodeport-ips`.
pub fn nft_script(svcs: &[Svc], node_ip: &str) -> String {
    nft_family(svcs, Family::V4, node_ip)
}

/// The `nft -f` input of kube-proxy's IPv6 proxier for the IPv6 side of `svcs`: table
/// `ip6 kube-proxy`, the same layout as [`nft_script`]. `node_ip6` goes into `nodeport-ips`.
pub fn nft_script6(svcs: &[Svc], node_ip6: &str) -> String {
    nft_family(svcs, Family::V6, node_ip6)
}

/// `family`'s table (`ip` / `ip6 kube-proxy`) for `family`'s view of `svcs`.
pub fn nft_family(svcs: &[Svc], family: Family, node_ip: &str) -> String {
    let Fam {
        ipx,
        addr_type,
        cluster_cidr,
        service_cidr,
        ..
    } = fam(family);
    let svcs = views(svcs, family);
    let mut t = String::with_capacity(svcs.len() * 1500 + 8192);
    let _ = write!(
        t,
        "add table {ipx} kube-proxy\ndelete table {ipx} kube-proxy\n"
    );
    let base = format!(
        r#"add table {ipx} kube-proxy {{ comment "rules for kube-proxy" ; }}
add set {ipx} kube-proxy cluster-ips {{ type {addr_type} ; comment "Active ClusterIPs" ; }}
add set {ipx} kube-proxy nodeport-ips {{ type {addr_type} ; comment "IPs that accept NodePort traffic" ; }}
add map {ipx} kube-proxy firewall-ips {{ type {addr_type} . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}
add map {ipx} kube-proxy no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}
add map {ipx} kube-proxy no-endpoint-services {{ type {addr_type} . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}
add map {ipx} kube-proxy service-ips {{ type {addr_type} . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add map {ipx} kube-proxy service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}
add chain {ipx} kube-proxy cluster-ips-check
add chain {ipx} kube-proxy filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; }}
add chain {ipx} kube-proxy filter-output-pre-dnat {{ type filter hook output priority -110 ; }}
add chain {ipx} kube-proxy filter-forward {{ type filter hook forward priority 0 ; }}
add chain {ipx} kube-proxy filter-input {{ type filter hook input priority 0 ; }}
add chain {ipx} kube-proxy filter-output {{ type filter hook output priority 0 ; }}
add chain {ipx} kube-proxy firewall-check
add chain {ipx} kube-proxy mark-for-masquerade
add chain {ipx} kube-proxy masquerading
add chain {ipx} kube-proxy nat-output {{ type nat hook output priority -100 ; }}
add chain {ipx} kube-proxy nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add chain {ipx} kube-proxy nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain {ipx} kube-proxy nodeport-endpoints-check
add chain {ipx} kube-proxy reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}
add chain {ipx} kube-proxy services
add chain {ipx} kube-proxy service-endpoints-check
add rule {ipx} kube-proxy cluster-ips-check {ipx} daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule {ipx} kube-proxy cluster-ips-check {ipx} daddr {{ {service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"
add rule {ipx} kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule {ipx} kube-proxy filter-forward ct state new jump service-endpoints-check
add rule {ipx} kube-proxy filter-forward ct state new jump cluster-ips-check
add rule {ipx} kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule {ipx} kube-proxy filter-input ct state new jump service-endpoints-check
add rule {ipx} kube-proxy filter-output ct state new jump service-endpoints-check
add rule {ipx} kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule {ipx} kube-proxy filter-output ct state new jump cluster-ips-check
add rule {ipx} kube-proxy firewall-check {ipx} daddr . meta l4proto . th dport vmap @firewall-ips
add rule {ipx} kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule {ipx} kube-proxy masquerading mark and 0x4000 == 0 return
add rule {ipx} kube-proxy masquerading mark set mark xor 0x4000
add rule {ipx} kube-proxy masquerading masquerade fully-random
add rule {ipx} kube-proxy nat-output jump services
add rule {ipx} kube-proxy nat-postrouting jump masquerading
add rule {ipx} kube-proxy nat-prerouting jump services
add rule {ipx} kube-proxy nodeport-endpoints-check {ipx} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule {ipx} kube-proxy reject-chain reject
add rule {ipx} kube-proxy services {ipx} daddr . meta l4proto . th dport vmap @service-ips
add rule {ipx} kube-proxy services {ipx} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add element {ipx} kube-proxy nodeport-ips {{ {node_ip} }}
add rule {ipx} kube-proxy service-endpoints-check {ipx} daddr . meta l4proto . th dport vmap @no-endpoint-services
"#
    );
    t.push_str(&base);
    for v in &svcs {
        let s = v.s;
        let chain = format!("service-{}", nft_base(s));
        // Chains first: the service chain's vmap refers to its endpoint chains.
        for ip in &v.endpoints {
            let ep = nft_ep_base(s, &ip.to_string(), s.target_port);
            let _ = writeln!(t, "add chain {ipx} kube-proxy endpoint-{ep}");
        }
        let _ = writeln!(t, "add chain {ipx} kube-proxy {chain}");
        let _ = writeln!(
            t,
            "add rule {ipx} kube-proxy {chain} {ipx} daddr {} {ipx} saddr != {cluster_cidr} jump mark-for-masquerade",
            v.ip
        );
        let eps: Vec<String> = v
            .endpoints
            .iter()
            .map(|ip| {
                format!(
                    "endpoint-{}",
                    nft_ep_base(s, &ip.to_string(), s.target_port)
                )
            })
            .collect();
        let vmap: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{i} : goto {e}"))
            .collect();
        let _ = writeln!(
            t,
            "add rule {ipx} kube-proxy {chain} numgen random mod {} vmap {{ {} }}",
            eps.len(),
            vmap.join(" , ")
        );
        for (ip, ep) in v.endpoints.iter().zip(&eps) {
            let _ = writeln!(
                t,
                "add rule {ipx} kube-proxy {ep} {ipx} saddr {ip} jump mark-for-masquerade\n\
                 add rule {ipx} kube-proxy {ep} meta l4proto tcp dnat to {}",
                SocketAddr::new(*ip, s.target_port)
            );
        }
        let _ = writeln!(
            t,
            "add element {ipx} kube-proxy cluster-ips {{ {} }}\n\
             add element {ipx} kube-proxy service-ips {{ {} . tcp . {} : goto {chain} }}",
            v.ip, v.ip, s.port
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn svc1() -> Svc {
        Svc {
            namespace: "ns1".into(),
            name: "svc1".into(),
            ip: Ipv4Addr::new(172, 30, 0, 41),
            ip6: None,
            port: 80,
            port_name: "p80".into(),
            target_port: 80,
            endpoints: vec![Ipv4Addr::new(10, 180, 0, 1)],
            endpoints6: Vec::new(),
        }
    }

    /// The chain names kube-proxy's own tests expect for ns1/svc1:p80 -> 10.180.0.1:80.
    #[test]
    fn chain_names_match_kube_proxy() {
        let s = svc1();
        assert_eq!(svc_chain(&s), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(sep_chain(&s, "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        assert_eq!(nft_base(&s), "ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            nft_ep_base(&s, "10.180.0.1", 80),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn probabilities_split_evenly() {
        let mut s = svc1();
        s.endpoints = (1..=3).map(|i| Ipv4Addr::new(10, 180, 0, i)).collect();
        let rules = iptables_restore(&[s]);
        assert!(rules.contains("--probability 0.3333333333 -j KUBE-SEP-"));
        assert!(rules.contains("--probability 0.5000000000 -j KUBE-SEP-"));
        assert!(rules.ends_with("COMMIT\n"));
        let nft = nft_script(&[svc1()], "192.168.0.2");
        assert!(nft.contains(
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }"
        ));
    }

    /// kube-proxy's IPv6 proxiers: `[ip]:port` endpoints (in the SEP hash too), `/128`
    /// sources, the IPv6 cluster CIDR; nftables' `ip6` table with the colons of an endpoint
    /// chain name turned into dots. An IPv4-only service has no IPv6 rules.
    #[test]
    fn ipv6_layouts() {
        let mut s = svc1().dual_stack();
        s.ip6 = Some("fd00:96::29".parse().unwrap());
        let rules = ip6tables_restore(std::slice::from_ref(&s));
        let sep = sep_chain(&s, "[fd00:10:180::1]:80");
        assert_ne!(sep, sep_chain(&s, "10.180.0.1:80"));
        assert!(rules.contains(&format!(":{sep} - [0:0]")), "{rules}");
        assert!(rules.contains(&format!(
            "-A {sep} -m comment --comment \"ns1/svc1:p80\" -s fd00:10:180::1/128 -j KUBE-MARK-MASQ"
        )));
        assert!(rules.contains("-j DNAT --to-destination [fd00:10:180::1]:80"));
        assert!(
            rules.contains("-d fd00:96::29 --dport 80 ! -s fd00:10:244::/46 -j KUBE-MARK-MASQ")
        );
        assert!(!rules.contains("10.180.0.1") && !rules.contains("172.30.0.41"));
        // The IPv4 side of the same service is the IPv4 layout, unchanged.
        assert_eq!(
            iptables_restore(std::slice::from_ref(&s)),
            iptables_restore(&[svc1()])
        );
        assert_eq!(ip6tables_restore(&[svc1()]).matches("KUBE-SVC-").count(), 0);

        let nft = nft_script6(std::slice::from_ref(&s), "fd00:10:250:3::2");
        assert!(nft.starts_with("add table ip6 kube-proxy\ndelete table ip6 kube-proxy\n"));
        assert!(!nft.contains(" ip kube-proxy") && !nft.contains("ipv4_addr"));
        let ep = nft_ep_base(&s, "fd00:10:180::1", 80);
        assert!(ep.ends_with("-ns1/svc1/tcp/p80__fd00.10.180..1/80"), "{ep}");
        assert!(nft.contains(&format!(
            "add rule ip6 kube-proxy endpoint-{ep} meta l4proto tcp dnat to [fd00:10:180::1]:80"
        )));
        assert!(nft.contains(
            "add element ip6 kube-proxy service-ips { fd00:96::29 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }"
        ));
        assert!(nft.contains("ip6 daddr { fd00:96::/108 } drop"));
        assert!(nft.contains("add element ip6 kube-proxy nodeport-ips { fd00:10:250:3::2 }"));
        let lb = iptables_restore_lb_local(&s, "fd00:192:0:2::20".parse().unwrap());
        assert!(
            lb.contains("-d fd00:192:0:2::20 --dport 80 -j KUBE-EXT-"),
            "{lb}"
        );
        assert!(lb.contains("-s fd00:10:244::/46 -j KUBE-SVC-"), "{lb}");
        assert!(lb.contains("-> [fd00:10:180::1]:80\" -j KUBE-SEP-"), "{lb}");
    }
}

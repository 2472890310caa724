//! The SSRF guard: webhook targets must be http(s) URLs whose host resolves only to public
//! addresses, unless `WEBHOOK_ALLOW_NETS` lists the range. Checked when a subscriber is
//! created and again on every connection: the HTTP client resolves names through
//! [`GuardedResolver`], so a name re-pointed at a private address later is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

#[derive(Clone, Debug, Default)]
pub struct Guard {
    allow: Vec<IpNet>,
}

impl Guard {
    pub fn new(allow: Vec<IpNet>) -> Guard {
        Guard { allow }
    }

    /// `WEBHOOK_ALLOW_NETS`: comma-separated CIDR ranges (a bare address is a /32 or /128).
    pub fn parse_nets(spec: &str) -> Result<Vec<IpNet>, String> {
        spec.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{s}` is not a CIDR range like 127.0.0.0/8"))
            })
            .collect()
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        self.refusal(ip).is_none()
    }

    /// Why `ip` is refused: its special-purpose range, unless WEBHOOK_ALLOW_NETS lists it
    /// (an IPv4-mapped address is also allowed by its IPv4 range).
    fn refusal(&self, ip: IpAddr) -> Option<String> {
        let why = special(ip)?;
        let canonical = ip.to_canonical();
        let allowed = self
            .allow
            .iter()
            .any(|n| n.contains(&ip) || n.contains(&canonical));
        (!allowed).then_some(why)
    }

    /// Checks scheme and host without resolving; an IP literal is checked here.
    pub fn check_url_syntax(&self, raw: &str) -> Result<Url, String> {
        let url = Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme `{}` is not http or https", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("credentials in the URL are not accepted".into());
        }
        match url.host() {
            None => Err("the URL has no host".into()),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)).map(|_| url.clone()),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)).map(|_| url.clone()),
            Some(url::Host::Domain(_)) => Ok(url.clone()),
        }
    }

    /// Full check: syntax, then every address the host resolves to.
    pub async fn check_url(&self, raw: &str) -> Result<Url, String> {
        let url = self.check_url_syntax(raw)?;
        if let Some(url::Host::Domain(host)) = url.host() {
            self.resolve(host).await?;
        }
        Ok(url)
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        match self.refusal(ip) {
            None => Ok(()),
            Some(why) => Err(format!(
                "{ip} is not a public address ({why}; allow its range in WEBHOOK_ALLOW_NETS)"
            )),
        }
    }

    /// Resolves `host` (a name or an IP literal); fails unless every address is permitted.
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, String> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        for a in &addrs {
            self.check_ip(a.ip())
                .map_err(|e| format!("{host} resolves to {e}"))?;
        }
        Ok(addrs)
    }
}

/// The HTTP client's resolver: the guard's check at connection time.
pub struct GuardedResolver(pub Arc<Guard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let addrs = guard.resolve(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Globally routable unicast: no range of [`special`] (the IANA special-purpose
/// registries), and for IPv6 inside global unicast `2000::/3`.
pub fn is_public(ip: IpAddr) -> bool {
    special(ip).is_none()
}

/// IPv4 ranges that are not globally reachable: the IANA IPv4 Special-Purpose Address
/// Registry (RFC 6890 and successors; the entries it marks globally reachable, such as
/// AS112 and AMT, are left out), plus multicast and the reserved 240.0.0.0/4.
const SPECIAL_V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\""),
    ("10.0.0.0/8", "private-use"),
    ("100.64.0.0/10", "shared address space (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private-use"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
    ("192.168.0.0/16", "private-use"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "limited broadcast"),
    ("240.0.0.0/4", "reserved"),
];

/// IPv6 ranges that are not globally reachable (the IANA IPv6 Special-Purpose Address
/// Registry, more specific first), beside those outside `2000::/3`, which are refused
/// anyway and named here where the registry names them. The ranges that embed an IPv4
/// address the traffic reaches (mapped, NAT64, 6to4) are judged by that address instead
/// (see [`embedded_v4`]).
const SPECIAL_V6: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0:0/96", "IPv4-translated"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001:2::/48", "benchmarking"),
    ("2001:10::/28", "ORCHID (deprecated)"),
    ("2001:20::/28", "ORCHIDv2"),
    ("2001:db8::/32", "documentation"),
    ("2001::/23", "IETF protocol assignments"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6) SIDs"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

fn table(entries: &[(&str, &'static str)]) -> Vec<(IpNet, &'static str)> {
    entries
        .iter()
        .map(|(net, name)| (net.parse().expect("a valid range in the table"), *name))
        .collect()
}

static SPECIAL: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    let mut all = table(SPECIAL_V4);
    all.extend(table(SPECIAL_V6));
    all
});

/// The IPv4 address an IPv6 one carries traffic to: IPv4-mapped `::ffff:0:0/96`, the
/// well-known NAT64 prefix `64:ff9b::/96`, 6to4 `2002::/16` (bits 16–47).
fn embedded_v4(v6: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let s = v6.segments();
    let low = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    if let Some(v4) = v6.to_ipv4_mapped() {
        Some((v4, "IPv4-mapped"))
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some((low, "NAT64"))
    } else if s[0] == 0x2002 {
        let v4 = Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2]));
        Some((v4, "6to4"))
    } else {
        None
    }
}

/// Why `ip` is not a public unicast address (the registry's name of its range), or `None`
/// when it is one.
pub fn special(ip: IpAddr) -> Option<String> {
    if let IpAddr::V6(v6) = ip {
        if let Some((v4, how)) = embedded_v4(v6) {
            return special(IpAddr::V4(v4)).map(|why| format!("{how}, embedding {v4}: {why}"));
        }
    }
    if let Some((_, name)) = SPECIAL.iter().find(|(net, _)| net.contains(&ip)) {
        return Some(name.to_string());
    }
    match ip {
        IpAddr::V6(v6) if v6.segments()[0] & 0xe000 != 0x2000 => {
            Some("outside global unicast 2000::/3".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One address inside each range (and at its edges where an off-by-one would show),
    /// with the name the refusal gives; then public addresses next to them.
    #[test]
    fn every_special_purpose_range_is_refused_by_name_and_public_addresses_pass() {
        let refused: &[(&str, &str)] = &[
            ("0.0.0.0", "this network"),
            ("0.255.255.255", "this network"),
            ("10.1.2.3", "private-use"),
            ("100.64.0.1", "shared address space"),
            ("100.127.255.254", "shared address space"),
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.16.0.1", "private-use"),
            ("172.31.255.255", "private-use"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.2.1", "TEST-NET-1"),
            ("192.88.99.1", "6to4 relay anycast"),
            ("192.168.1.1", "private-use"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "TEST-NET-2"),
            ("203.0.113.9", "TEST-NET-3"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "limited broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("::8.8.8.8", "IPv4-compatible"),
            (
                "::ffff:127.0.0.1",
                "IPv4-mapped, embedding 127.0.0.1: loopback",
            ),
            (
                "::ffff:192.168.1.1",
                "IPv4-mapped, embedding 192.168.1.1: private-use",
            ),
            ("::ffff:0:127.0.0.1", "IPv4-translated"),
            ("::ffff:0:8.8.8.8", "IPv4-translated"),
            ("64:ff9b::127.0.0.1", "NAT64, embedding 127.0.0.1: loopback"),
            (
                "64:ff9b::10.0.0.1",
                "NAT64, embedding 10.0.0.1: private-use",
            ),
            ("64:ff9b:1::8.8.8.8", "local-use IPv4/IPv6 translation"),
            ("100::1", "discard-only"),
            ("100::ffff:ffff:ffff:ffff", "discard-only"),
            ("2001::1", "Teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "ORCHID"),
            ("2001:20::1", "ORCHIDv2"),
            ("2001:1::1", "IETF protocol assignments"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2002:7f00:1::1", "6to4, embedding 127.0.0.1: loopback"),
            (
                "2002:c0a8:101::1",
                "6to4, embedding 192.168.1.1: private-use",
            ),
            ("2002:c058:6301::1", "6to4, embedding 192.88.99.1"),
            ("5f00::1", "SRv6"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("1::1", "outside global unicast"),
            ("4000::1", "outside global unicast"),
        ];
        for (ip, name) in refused {
            let ip: IpAddr = ip.parse().unwrap();
            let why = special(ip).unwrap_or_else(|| panic!("{ip} passed as public"));
            assert!(why.contains(name), "{ip}: {why}, expected {name}");
            assert!(!Guard::default().permits(ip), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.88.98.255",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860:4860::8888",
            "2001:200::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(special(ip), None, "{ip}");
        }
    }

    #[tokio::test]
    async fn private_targets_are_refused_unless_allowed() {
        let strict = Guard::default();
        for url in [
            "http://10.0.0.1/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:9/x",
            "http://[::1]/x",
            "http://[fd00::1]/x",
            "http://[::ffff:192.168.1.1]/x",
            "http://[::127.0.0.1]/x",
            "http://[::ffff:0:127.0.0.1]/x",
            "http://[2001::1]/x",
            "http://[100::1]/x",
            "http://192.88.99.1/x",
            "http://localhost:8080/x",
        ] {
            assert!(strict.check_url(url).await.is_err(), "{url} passed");
        }
        assert!(strict
            .check_url("ftp://example.com/")
            .await
            .unwrap_err()
            .contains("scheme"));
        assert!(strict.check_url("http://8.8.8.8/hook").await.is_ok());

        let loopback = Guard::new(Guard::parse_nets("127.0.0.0/8, ::1").unwrap());
        assert!(loopback.check_url("http://127.0.0.1:9/x").await.is_ok());
        assert!(loopback
            .check_url("http://[::ffff:127.0.0.1]:9/x")
            .await
            .is_ok());
        // Allowing 127.0.0.0/8 allows neither IPv6 spelling that does not reach it.
        assert!(loopback.check_url("http://[::127.0.0.1]/x").await.is_err());
        assert!(loopback
            .check_url("http://[::ffff:0:127.0.0.1]/x")
            .await
            .is_err());
        assert!(loopback.check_url("http://10.0.0.1/x").await.is_err());
        assert!(Guard::parse_nets("10.0.0.0/33").is_err());
    }
}

//! The SSRF guard: webhook targets must be http(s) URLs whose host resolves only to public
//! addresses, unless `WEBHOOK_ALLOW_NETS` lists the range. Checked when a subscriber is
//! created and again on every connection: the HTTP client resolves names through
//! [`GuardedResolver`], so a name re-pointed at a private address later is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

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
        is_public(ip) || self.allow.iter().any(|n| n.contains(&ip))
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
        if self.permits(ip) {
            Ok(())
        } else {
            Err(format!(
                "{ip} is not a public address (allow its range in WEBHOOK_ALLOW_NETS)"
            ))
        }
    }

    /// Resolves `host`; fails unless every address is permitted.
    async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, String> {
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

/// Globally routable unicast (RFC 6890 special-purpose ranges excluded).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 (embeds IPv4)
                || (s[0] == 0x2002) // 6to4 (embeds IPv4)
                || v6 == Ipv6Addr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(loopback.check_url("http://10.0.0.1/x").await.is_err());
        assert!(Guard::parse_nets("10.0.0.0/33").is_err());
    }
}

//! The connection caps: how many sockets are open, in all and per client address, and
//! which a new one gets — served, answered 503, or closed at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use super::Limits;

pub(super) enum Admission {
    Serve(Slot),
    Refuse(Slot, &'static str),
    Close,
}

/// Connections open now, in all and per client address.
pub(super) struct Caps {
    limits: Arc<Limits>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    served: usize,
    refusing: usize,
    per_client: HashMap<IpAddr, usize>,
}

impl Caps {
    pub(super) fn new(limits: Arc<Limits>) -> Caps {
        Caps {
            limits,
            open: Mutex::new(Open::default()),
        }
    }

    pub(super) fn admit(self: &Arc<Self>, peer: SocketAddr) -> Admission {
        let client = client_key(peer.ip());
        let mut open = self.open.lock().expect("not poisoned");
        let from_client = open.per_client.get(&client).copied().unwrap_or(0);
        let why = if open.served >= self.limits.max_connections {
            "the service has as many connections as it serves at once (HTTP_MAX_CONNECTIONS); retry later"
        } else if from_client >= self.limits.max_per_ip {
            "this address has as many connections as one may hold (HTTP_MAX_CONNECTIONS_PER_IP); retry later"
        } else {
            open.served += 1;
            *open.per_client.entry(client).or_default() += 1;
            return Admission::Serve(Slot {
                caps: self.clone(),
                client: Some(client),
            });
        };
        if open.refusing >= self.limits.refusing {
            return Admission::Close;
        }
        open.refusing += 1;
        Admission::Refuse(
            Slot {
                caps: self.clone(),
                client: None,
            },
            why,
        )
    }
}

/// Whom the per-client cap counts: an IPv4 address (also when IPv4-mapped), an IPv6 /64
/// (one subscriber's allocation).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// A connection's place in the caps (served, or being refused), released when dropped.
pub(super) struct Slot {
    caps: Arc<Caps>,
    /// `None`: a refusing slot.
    client: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().expect("not poisoned");
        match self.client {
            None => open.refusing -= 1,
            Some(client) => {
                open.served -= 1;
                if let Some(n) = open.per_client.get_mut(&client) {
                    *n -= 1;
                    if *n == 0 {
                        open.per_client.remove(&client);
                    }
                }
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_counted_by_ipv4_address_and_ipv6_slash_64() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("192.0.2.7"), key("::ffff:192.0.2.7"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }
}

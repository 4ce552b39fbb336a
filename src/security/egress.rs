//! Where webhook and DICOMweb calls may go: public addresses, plus the private, loopback and
//! link-local networks the configuration allows. Names are checked after DNS resolution, by
//! the HTTP clients' own resolver, so a name cannot pass a check and then connect elsewhere;
//! those clients follow no redirects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A target the policy refuses, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

/// The networks calls may reach.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Arc<[IpNet]>,
}

impl EgressPolicy {
    /// Public addresses and the `allow`ed networks.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self {
            allow: allow.into(),
        }
    }

    /// Whether calls may reach `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        is_public(ip) || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Checks a URL whose host is an address (the resolver never sees those); a URL with a
    /// name passes here and is checked when it is resolved.
    ///
    /// # Errors
    /// The URL does not parse, or names a refused address.
    pub fn check_literal(&self, url: &str) -> Result<(), Refused> {
        let parsed = reqwest::Url::parse(url).map_err(|e| Refused(format!("bad URL: {e}")))?;
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(Refused("the URL has no host".into())),
        };
        self.check_ip(ip)
    }

    /// Checks a URL's host now, resolving a name: for a clear error when a target is set up.
    ///
    /// # Errors
    /// The URL does not parse, its name does not resolve, or it reaches a refused address.
    pub async fn check_url(&self, url: &str) -> Result<(), Refused> {
        self.check_literal(url)?;
        let parsed = reqwest::Url::parse(url).map_err(|e| Refused(format!("bad URL: {e}")))?;
        let (Some(url::Host::Domain(name)), Some(port)) =
            (parsed.host(), parsed.port_or_known_default())
        else {
            return Ok(());
        };
        let addresses = tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| Refused(format!("{name} does not resolve: {e}")))?;
        for address in addresses {
            self.check_ip(address.ip())?;
        }
        Ok(())
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Refused(format!(
                "{ip} is a private, loopback or link-local address; allow its network in CHRONICLE_EGRESS_ALLOW"
            )))
        }
    }

    /// An HTTP client builder that resolves through this policy (dropping refused addresses,
    /// failing when none is left) and follows no redirects.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(self.clone()))
            .redirect(reqwest::redirect::Policy::none())
    }
}

impl Resolve for EgressPolicy {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|address| policy.permits(address.ip()))
                .collect();
            if permitted.is_empty() {
                let why = resolved.first().map_or_else(
                    || Refused(format!("{host} has no address")),
                    |a| {
                        policy
                            .check_ip(a.ip())
                            .err()
                            .unwrap_or_else(|| Refused(host.clone()))
                    },
                );
                return Err(Box::new(why) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is judged as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // Benchmarking, 198.18.0.0/15; reserved, 240.0.0.0/4.
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, site-local fec0::/10.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        // NAT64 64:ff9b::/96 can reach anything IPv4: judged as refused.
        || first == 0x0064)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|_| panic!("{text}"))
    }

    #[test]
    fn private_loopback_and_link_local_addresses_are_refused_by_default() {
        let policy = EgressPolicy::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert!(!policy.permits(ip(refused)), "{refused}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(policy.permits(ip(public)), "{public}");
        }
    }

    #[test]
    fn allowed_networks_are_reachable_and_nothing_around_them() {
        let allow = vec!["127.0.0.1/32".parse().unwrap_or_else(|_| unreachable!())];
        let policy = EgressPolicy::new(allow);
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(policy.permits(ip("::ffff:127.0.0.1")));
        assert!(!policy.permits(ip("127.0.0.2")));
        assert!(!policy.permits(ip("10.0.0.1")));
    }

    #[test]
    fn literal_addresses_are_checked_and_names_are_left_to_the_resolver() {
        let policy = EgressPolicy::default();
        assert!(policy.check_literal("http://127.0.0.1:8080/hook").is_err());
        assert!(policy.check_literal("http://[::1]/hook").is_err());
        assert!(policy
            .check_literal("http://169.254.169.254/latest")
            .is_err());
        assert!(policy.check_literal("https://hooks.example.com/x").is_ok());
        assert!(policy.check_literal("not a url").is_err());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_after_resolution() {
        let policy = EgressPolicy::default();
        let refused = policy.check_url("http://localhost:9/hook").await;
        assert!(refused.is_err(), "{refused:?}");
        let resolved = policy
            .resolve("localhost".parse().unwrap_or_else(|_| unreachable!()))
            .await;
        assert!(resolved.is_err());
    }
}

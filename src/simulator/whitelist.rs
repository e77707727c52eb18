//! An app's IP whitelist: single addresses or CIDR ranges, IPv4 or IPv6.
//!
//! Invariant: IPv4-mapped IPv6 peers (`::ffff:1.2.3.4`) are matched as the
//! IPv4 address they carry, so a dual-stack listener behaves like an IPv4 one.

use std::net::IpAddr;

use super::answers::canonical_ip;
use super::error::WhitelistError;

/// One parsed whitelist entry: a network address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `1.2.3.4`, `1.2.3.0/24`, `::1` or `2001:db8::/32`.
    ///
    /// Errors when the address or the prefix length does not parse; the error
    /// names the entry.
    pub(crate) fn parse(entry: &str) -> Result<Self, WhitelistError> {
        let entry = entry.trim();
        let (addr, prefix) = match entry.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (entry, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| WhitelistError::NotAnAddress {
            entry: entry.to_string(),
        })?;
        let network = canonical_ip(network);
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                WhitelistError::BadPrefix {
                    entry: entry.to_string(),
                }
            })?,
        };
        Ok(IpRange { network, prefix })
    }

    /// True when `ip` lies inside this range.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical_ip(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpRange {
    /// `network/prefix`, as written in a whitelist.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Compares the top `prefix` bits of two `bits`-wide numbers.
fn prefix_match(a: u128, b: u128, bits: u32, prefix: u8) -> bool {
    let shift = bits - u32::from(prefix);
    if shift >= 128 {
        return true;
    }
    (a >> shift) == (b >> shift)
}

/// True when `peer` may call: the list is empty (any IP) or one entry contains it.
pub(crate) fn allows(list: &[IpRange], peer: Option<IpAddr>) -> bool {
    if list.is_empty() {
        return true;
    }
    peer.is_some_and(|ip| list.iter().any(|r| r.contains(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn single_addresses_and_ranges_match() {
        let one = IpRange::parse("10.0.0.1").unwrap();
        assert!(one.contains(ip("10.0.0.1")));
        assert!(one.contains(ip("::ffff:10.0.0.1")));
        assert!(!one.contains(ip("10.0.0.2")));
        let net = IpRange::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(IpRange::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(
            IpRange::parse("2001:db8::/32")
                .unwrap()
                .contains(ip("2001:db8::7"))
        );
    }

    #[test]
    fn junk_entries_are_rejected() {
        assert!(IpRange::parse("localhost").is_err());
        assert!(IpRange::parse("10.0.0.0/33").is_err());
        assert!(IpRange::parse("10.0.0.0/x").is_err());
    }

    #[test]
    fn an_empty_list_allows_everyone_and_a_missing_peer_nobody_else() {
        assert!(allows(&[], None));
        assert!(!allows(&[IpRange::parse("10.0.0.1").unwrap()], None));
    }
}

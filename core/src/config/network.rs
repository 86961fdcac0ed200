//! Address blocks (`TRUSTED_PROXIES`), as [`IpNet`]s.

use std::net::IpAddr;

pub use ipnet::IpNet;

/// An address block (`10.0.0.0/8`, `::1/128`), or a single address as the block holding only it.
pub(super) fn parse_block(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Whether one of `blocks` holds `ip`. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as a
/// dual-stack socket reports an IPv4 peer) counts as its IPv4 address.
pub fn any_contains(blocks: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    blocks.iter().any(|block| block.contains(&ip))
}

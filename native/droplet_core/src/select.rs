//! Which address of a droplet the cluster connects to.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::Error;
use crate::model::{AddressType, Droplet, NetAddress, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Private,
    Public,
}

/// A choice of address, built by [`Selector::new`], which refuses the
/// "private IPv6" that would quietly select nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector {
    network: Network,
    ipv6: bool,
}

impl Selector {
    pub fn new(network: Network, ipv6: bool) -> Result<Selector, Error> {
        if network == Network::Private && ipv6 {
            return Err(Error::NoPrivateIpv6);
        }
        Ok(Selector { network, ipv6 })
    }

    /// The first address of the wanted type that parses as the wanted family
    /// (it becomes part of a node name), for active droplets only.
    pub fn select<'d>(&self, droplet: &'d Droplet) -> Option<&'d str> {
        if droplet.status != Status::Active {
            return None;
        }
        let (family, parses): (&[NetAddress], fn(&str) -> bool) = if self.ipv6 {
            (&droplet.networks.v6, |a| a.parse::<Ipv6Addr>().is_ok())
        } else {
            (&droplet.networks.v4, |a| a.parse::<Ipv4Addr>().is_ok())
        };
        let wanted = match self.network {
            Network::Private => AddressType::Private,
            Network::Public => AddressType::Public,
        };
        family
            .iter()
            .filter(|a| a.kind == wanted)
            .map(|a| a.ip_address.as_str())
            .find(|a| parses(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse_page, tests::ALL, Networks};

    fn addr(ip: &str, kind: AddressType) -> NetAddress {
        NetAddress { ip_address: ip.into(), kind }
    }

    fn droplet(status: Status, v4: Vec<NetAddress>, v6: Vec<NetAddress>) -> Droplet {
        Droplet {
            id: 1,
            name: "n".into(),
            status,
            tags: None,
            region: None,
            vpc_uuid: None,
            networks: Networks { v4, v6 },
            fields: vec![],
        }
    }

    fn full() -> Droplet {
        droplet(
            Status::Active,
            vec![
                addr("10.0.0.1", AddressType::Other("anchor".into())),
                addr("10.0.0.2", AddressType::Private),
                addr("10.0.0.3", AddressType::Private),
                addr("203.0.113.1", AddressType::Public),
            ],
            vec![
                addr("2001:db8::1", AddressType::Public),
                addr("2001:db8::2", AddressType::Public),
            ],
        )
    }

    #[test]
    fn every_valid_combination_picks_the_first_match() {
        let d = full();
        let pick = |n, v6| Selector::new(n, v6).map(|s| s.select(&d).map(str::to_owned));
        assert_eq!(pick(Network::Private, false), Ok(Some("10.0.0.2".into())));
        assert_eq!(pick(Network::Public, false), Ok(Some("203.0.113.1".into())));
        assert_eq!(pick(Network::Public, true), Ok(Some("2001:db8::1".into())));
    }

    #[test]
    fn private_ipv6_is_an_error_not_an_empty_result() {
        assert_eq!(Selector::new(Network::Private, true), Err(Error::NoPrivateIpv6));
    }

    #[test]
    fn only_active_droplets_get_an_address() {
        for status in [Status::New, Status::Off, Status::Archive, Status::Other("active ".into())] {
            let mut d = full();
            d.status = status;
            for (n, v6) in
                [(Network::Private, false), (Network::Public, false), (Network::Public, true)]
            {
                let s = Selector::new(n, v6).expect("valid selector");
                assert_eq!(s.select(&d), None);
            }
        }
    }

    #[test]
    fn a_missing_type_selects_nothing() {
        let only_public =
            droplet(Status::Active, vec![addr("203.0.113.9", AddressType::Public)], vec![]);
        let private = Selector::new(Network::Private, false).expect("valid");
        let public6 = Selector::new(Network::Public, true).expect("valid");
        assert_eq!(private.select(&only_public), None);
        assert_eq!(public6.select(&only_public), None);
        let empty = droplet(Status::Active, vec![], vec![]);
        let public = Selector::new(Network::Public, false).expect("valid");
        assert_eq!(public.select(&empty), None);
    }

    #[test]
    fn addresses_that_do_not_parse_or_are_of_the_other_family_are_skipped() {
        let d = droplet(
            Status::Active,
            vec![
                addr("", AddressType::Private),
                addr("10.0.0.1 ", AddressType::Private),
                addr("10.0.0.256", AddressType::Private),
                addr("010.0.0.1", AddressType::Private),
                addr("evil@host", AddressType::Private),
                addr("fd00::1", AddressType::Private),
                addr("10.0.0.9", AddressType::Private),
                addr("203.0.113.1/24", AddressType::Public),
                addr("2001:db8::5", AddressType::Public),
            ],
            vec![
                addr("10.0.0.1", AddressType::Public),
                addr("[2001:db8::1]", AddressType::Public),
                addr("2001:db8::1%eth0", AddressType::Public),
                addr("2001:db8::2", AddressType::Public),
            ],
        );
        let pick = |n, v6| Selector::new(n, v6).map(|s| s.select(&d).map(str::to_owned));
        assert_eq!(pick(Network::Private, false), Ok(Some("10.0.0.9".into())));
        assert_eq!(pick(Network::Public, false), Ok(None));
        assert_eq!(pick(Network::Public, true), Ok(Some("2001:db8::2".into())));
    }

    #[test]
    fn selects_from_the_example_page() {
        let page = parse_page(ALL.as_bytes(), 200, &Default::default()).expect("example parses");
        let private = Selector::new(Network::Private, false).expect("valid");
        let public6 = Selector::new(Network::Public, true).expect("valid");
        let got: Vec<Option<&str>> = page.droplets.iter().map(|d| private.select(d)).collect();
        assert_eq!(got, [Some("10.128.192.124"), Some("10.128.192.138"), Some("10.128.192.125")]);
        let got: Vec<Option<&str>> = page.droplets.iter().map(|d| public6.select(d)).collect();
        assert_eq!(got, [Some("2604:a880:0:1010::18a:a001"), None, None]);
    }
}

//! A port's connection slots ([`ConnectionSlots`]): at most so many connections open, and
//! counted by where they come from, so that one client cannot take every connection slot of
//! the gRPC or the HTTP port (`--max-connections-per-peer`). A client is
//! its IPv4 address, or the /64 prefix of its IPv6 address (one host is commonly given a
//! whole /64, so counting single IPv6 addresses would bound nothing). An entry lives while
//! its client has a connection open: there are never more entries than open connections.

use std::{
    collections::{HashMap, hash_map::Entry},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The connection slots of one port: `max` open at once, `max_per_peer` of them per client.
#[derive(Clone)]
pub(crate) struct ConnectionSlots {
    port: &'static str,
    open: Arc<Semaphore>,
    max: usize,
    peers: PeerSlots,
    max_per_peer: usize,
}

/// The slots one open connection holds; dropping it gives them back.
pub(crate) struct ConnectionSlot {
    _open: OwnedSemaphorePermit,
    _peer: PeerSlot,
}

impl ConnectionSlots {
    /// `port` names the port in the log ("HTTP", "gRPC").
    pub(crate) fn new(port: &'static str, max: usize, max_per_peer: usize) -> Self {
        Self {
            port,
            open: Arc::new(Semaphore::new(max)),
            max,
            peers: PeerSlots::default(),
            max_per_peer,
        }
    }

    /// The slots for a connection just accepted from `peer`, or none (it is to be closed at
    /// once, which is logged) when the port or its client holds all it may.
    pub(crate) fn admit(&self, peer: SocketAddr) -> Option<ConnectionSlot> {
        let Ok(open) = std::sync::Arc::clone(&self.open).try_acquire_owned() else {
            tracing::warn!(%peer, max = self.max, port = self.port,
                "connection closed at once: every connection slot of the port is taken");
            return None;
        };
        let Some(peer_slot) = self.peers.take(peer.ip(), self.max_per_peer) else {
            tracing::warn!(%peer, max = self.max_per_peer, port = self.port,
                "connection closed at once: this client holds its share of the port's connections");
            return None;
        };
        Some(ConnectionSlot {
            _open: open,
            _peer: peer_slot,
        })
    }
}

/// Open connections by client.
#[derive(Clone, Default)]
struct PeerSlots(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One open connection of a client; dropping it gives the slot back.
struct PeerSlot {
    slots: PeerSlots,
    client: IpAddr,
}

/// The client a peer address counts as: the IPv4 address (an IPv4-mapped IPv6 address is the
/// IPv4 one), or the IPv6 address's /64 prefix.
fn client(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

impl PeerSlots {
    /// A slot for one more connection from `peer`, unless its client already holds `max`.
    fn take(&self, peer: IpAddr, max: usize) -> Option<PeerSlot> {
        let client = client(peer);
        let mut open = self.0.lock().expect("peer slots");
        let held = open.entry(client).or_insert(0);
        if *held >= max {
            if *held == 0 {
                open.remove(&client);
            }
            return None;
        }
        *held += 1;
        Some(PeerSlot {
            slots: self.clone(),
            client,
        })
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.0.lock().expect("peer slots").len()
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.slots.0.lock().expect("peer slots");
        if let Entry::Occupied(mut held) = open.entry(self.client) {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_holds_at_most_its_share_and_others_are_not_counted_with_it() {
        let slots = PeerSlots::default();
        let first: Vec<_> = (0..3).map(|_| slots.take(ip("10.0.0.1"), 3)).collect();
        assert!(first.iter().all(Option::is_some));
        assert!(
            slots.take(ip("10.0.0.1"), 3).is_none(),
            "a fourth is refused"
        );
        assert!(
            slots.take(ip("10.0.0.2"), 3).is_some(),
            "another client is not"
        );
        drop(first);
        assert!(
            slots.take(ip("10.0.0.1"), 3).is_some(),
            "given back on drop"
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_prefix_and_mapped_ipv4_as_ipv4() {
        let slots = PeerSlots::default();
        let a = slots.take(ip("2001:db8:1:2::1"), 2);
        let b = slots.take(ip("2001:db8:1:2:ffff::9"), 2);
        assert!(a.is_some() && b.is_some());
        assert!(
            slots.take(ip("2001:db8:1:2:abcd::1"), 2).is_none(),
            "the same /64 is one client"
        );
        assert!(
            slots.take(ip("2001:db8:1:3::1"), 2).is_some(),
            "another /64 is not"
        );
        let v4 = slots.take(ip("192.0.2.7"), 1);
        assert!(v4.is_some());
        assert!(
            slots.take(ip("::ffff:192.0.2.7"), 1).is_none(),
            "mapped IPv4 is the same client"
        );
    }

    #[test]
    fn entries_live_only_while_connections_are_open() {
        let slots = PeerSlots::default();
        let held: Vec<_> = (0..100)
            .map(|i| slots.take(IpAddr::V4([10, 0, 0, i].into()), 1))
            .collect();
        assert_eq!(slots.clients(), 100);
        drop(held);
        assert_eq!(slots.clients(), 0);
    }
}

//! A pool's placement: which server a key goes to, as nutcracker's `server_pool_idx`.

use super::{Continuum, ContinuumServer, Distribution, HashKind, HashTag};

/// What placement needs to know about one server of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementServer {
    /// The server's identity (its name, else `host` / `host:port`), hashed into ketama points.
    pub name: Vec<u8>,
    /// Its weight from the server line.
    pub weight: u32,
}

/// The complete key-to-server function of one pool, over one set of live servers.
///
/// Server indexes are positions in the pool's name-sorted server list. A placement is
/// immutable; ejection builds a new one with [`Placement::with_live`].
#[derive(Debug, Clone)]
pub struct Placement {
    /// The pool's key hash.
    hash: HashKind,
    /// The pool's hash tag, if any.
    tag: Option<HashTag>,
    /// The pool's distribution.
    distribution: Distribution,
    /// Every server of the pool, live or not, in name-sorted order.
    servers: Vec<PlacementServer>,
    /// Which servers are live in this placement.
    live: Vec<bool>,
    /// The continuum over the live servers.
    continuum: Continuum,
}

impl Placement {
    /// The placement with every server live.
    pub fn new(
        hash: HashKind,
        tag: Option<HashTag>,
        distribution: Distribution,
        servers: Vec<PlacementServer>,
    ) -> Placement {
        let live = vec![true; servers.len()];
        let continuum = build_continuum(distribution, &servers, &live);
        Placement {
            hash,
            tag,
            distribution,
            servers,
            live,
            continuum,
        }
    }

    /// The same pool with only the servers marked `true` in `live` (indexed like the
    /// server list; missing entries count as live). Ketama point counts are recomputed
    /// over the live servers, as nutcracker does after an ejection.
    pub fn with_live(&self, live: &[bool]) -> Placement {
        let live: Vec<bool> = (0..self.servers.len())
            .map(|i| live.get(i).copied().unwrap_or(true))
            .collect();
        let continuum = build_continuum(self.distribution, &self.servers, &live);
        Placement {
            live,
            continuum,
            ..self.clone()
        }
    }

    /// The 32-bit hash nutcracker computes for `key`: 0 for a single-server pool or an
    /// empty routing key, otherwise the pool hash of the hash-tag content (or whole key).
    pub fn key_hash(&self, key: &[u8]) -> u32 {
        if self.servers.len() == 1 {
            return 0;
        }
        let routed = match &self.tag {
            Some(tag) => tag.routing_bytes(key),
            None => key,
        };
        if routed.is_empty() {
            0
        } else {
            self.hash.hash(routed)
        }
    }

    /// The index of the server that owns `key`, or `None` when no server is live.
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        self.continuum.lookup(self.key_hash(key))
    }

    /// The pool's servers in name-sorted order.
    pub fn servers(&self) -> &[PlacementServer] {
        &self.servers
    }

    /// Whether server `index` is live in this placement.
    pub fn is_live(&self, index: usize) -> bool {
        self.live.get(index).copied().unwrap_or(false)
    }

    /// The continuum this placement dispatches on.
    pub fn continuum(&self) -> &Continuum {
        &self.continuum
    }
}

/// Build the continuum for the live subset of `servers`.
fn build_continuum(
    distribution: Distribution,
    servers: &[PlacementServer],
    live: &[bool],
) -> Continuum {
    let view: Vec<ContinuumServer<'_>> = servers
        .iter()
        .zip(live)
        .map(|(s, &live)| ContinuumServer {
            name: &s.name,
            weight: s.weight,
            live,
        })
        .collect();
    Continuum::build(distribution, &view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three(distribution: Distribution) -> Placement {
        let servers = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
            .iter()
            .map(|n| PlacementServer {
                name: n.as_bytes().to_vec(),
                weight: 1,
            })
            .collect();
        Placement::new(HashKind::Fnv1a64, None, distribution, servers)
    }

    #[test]
    fn single_server_pool_skips_hashing() {
        let p = Placement::new(
            HashKind::Md5,
            None,
            Distribution::Ketama,
            vec![PlacementServer {
                name: b"only".to_vec(),
                weight: 1,
            }],
        );
        assert_eq!(p.key_hash(b"anything"), 0);
        assert_eq!(p.server_for(b"anything"), Some(0));
    }

    #[test]
    fn empty_key_hashes_to_zero() {
        assert_eq!(three(Distribution::Ketama).key_hash(b""), 0);
    }

    #[test]
    fn ejection_moves_only_the_dead_servers_keys_on_ketama() {
        let all = three(Distribution::Ketama);
        let without_1 = all.with_live(&[true, false, true]);
        assert!(!without_1.is_live(1));
        for i in 0..500 {
            let key = format!("key:{i}");
            let before = all.server_for(key.as_bytes());
            let after = without_1.server_for(key.as_bytes());
            assert_ne!(after, Some(1));
            if before != Some(1) {
                assert_eq!(before, after, "equal weights keep the ring for {key}");
            }
        }
        let none = all.with_live(&[false, false, false]);
        assert_eq!(none.server_for(b"k"), None);
    }
}

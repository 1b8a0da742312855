//! Maglev lookup-table population (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, section 3.4), pure.
//!
//! Every backend gets a preference list, a permutation of the table's `M` slots given by
//! an `offset` and a `skip` from two fixed hashes of its stable identity (address, port,
//! protocol; never a node-local backend id), and the backends take turns claiming their
//! next preferred free slot until the table is full. Consequences the tests check:
//! - the table depends only on the *set* of identities (they are sorted first), so every
//!   node builds the same table for the same endpoint set;
//! - each backend gets `floor(M/N)` or `ceil(M/N)` slots (the turns are round robin);
//! - a backend leaving or joining moves about `1/N` of the slots.
//!
//! `M` must be prime (so every skip in `1..M` walks all slots) and within
//! `MAGLEV_TABLE_MIN..=MAGLEV_TABLE_MAX` (the kernel map's value holds at most the latter).

use std::net::SocketAddr;

use service_lb_common::maglev::{MAGLEV_TABLE_MAX, MAGLEV_TABLE_MIN};

/// Annotation choosing a Service's backend selection for its north-south frontends
/// (`maglev` or `random`), over the daemon's `--lb-algorithm`.
pub const ANNOTATION_LB_ALGORITHM: &str = "service-lb.io/lb-algorithm";

/// How a north-south frontend picks a backend for a new flow. ClusterIP frontends are
/// always `Random` (their clients are on this node: no other node must agree).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LbAlgorithm {
    /// A uniformly random backend (kube-proxy's behaviour).
    #[default]
    Random,
    /// Maglev consistent hashing of the client's address and port: the same backend
    /// through every node, and about 1/N of the flows move when a backend changes.
    Maglev,
}

impl std::str::FromStr for LbAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "random" => Ok(Self::Random),
            "maglev" => Ok(Self::Maglev),
            other => Err(format!("{other:?} is not an lb algorithm (random, maglev)")),
        }
    }
}

impl LbAlgorithm {
    /// The Service's algorithm: its annotation when it names one, else `default` (an
    /// unknown value falls back to `default` too; the caller reports it).
    pub fn for_service(annotation: Option<&str>, default: Self) -> Result<Self, String> {
        match annotation {
            None => Ok(default),
            Some(value) => value.parse(),
        }
    }
}

/// A backend's identity for Maglev: the same on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevBackend {
    pub addr: SocketAddr,
    /// IP protocol number.
    pub proto: u8,
}

impl MaglevBackend {
    /// Address bytes, port (big-endian) and protocol: the hashed identity.
    fn bytes(&self, out: &mut Vec<u8>) {
        out.clear();
        match self.addr {
            SocketAddr::V4(a) => out.extend_from_slice(&a.ip().octets()),
            SocketAddr::V6(a) => out.extend_from_slice(&a.ip().octets()),
        }
        out.extend_from_slice(&self.addr.port().to_be_bytes());
        out.push(self.proto);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not a prime")]
    NotPrime(u32),
    #[error("Maglev table size {size} is outside {min}..={max}")]
    OutOfRange { size: u32, min: u32, max: u32 },
    #[error("{backends} backends do not fit a Maglev table of {size} entries")]
    TooManyBackends { backends: usize, size: u32 },
    #[error("backend {0:?} is listed twice")]
    Duplicate(MaglevBackend),
}

/// A validated table size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSize(u32);

impl TableSize {
    pub fn new(size: u32) -> Result<Self, MaglevError> {
        if !(MAGLEV_TABLE_MIN..=MAGLEV_TABLE_MAX).contains(&size) {
            return Err(MaglevError::OutOfRange {
                size,
                min: MAGLEV_TABLE_MIN,
                max: MAGLEV_TABLE_MAX,
            });
        }
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        Ok(Self(size))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl std::str::FromStr for TableSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: u32 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
        Self::new(n).map_err(|e| e.to_string())
    }
}

impl Default for TableSize {
    fn default() -> Self {
        Self(service_lb_common::maglev::DEFAULT_MAGLEV_TABLE_SIZE)
    }
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// FNV-1a (64 bit) with a seed mixed into the basis, then splitmix64's finaliser: fixed,
/// documented arithmetic, so the hash never changes with the Rust version or the node.
fn identity_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

const OFFSET_SEED: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SKIP_SEED: u64 = 0x736b_6970_7365_6564; // "skipseed"

/// Populates a table of `size` entries for `backends` (any order). Each entry is an index
/// into `backends`. No backend: an empty table.
pub fn populate(backends: &[MaglevBackend], size: TableSize) -> Result<Vec<usize>, MaglevError> {
    let m = size.get();
    if backends.len() > m as usize {
        return Err(MaglevError::TooManyBackends {
            backends: backends.len(),
            size: m,
        });
    }
    if backends.is_empty() {
        return Ok(Vec::new());
    }
    // Sorted by identity: the table depends on the set, not on the input order.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|i| backends[*i]);
    if let Some(w) = order.windows(2).find(|w| backends[w[0]] == backends[w[1]]) {
        return Err(MaglevError::Duplicate(backends[w[0]]));
    }
    let m64 = u64::from(m);
    let mut bytes = Vec::with_capacity(19);
    // (offset, skip, next position in the preference list) per backend, in sorted order.
    let mut prefs: Vec<(u64, u64, u64)> = order
        .iter()
        .map(|i| {
            backends[*i].bytes(&mut bytes);
            let offset = identity_hash(&bytes, OFFSET_SEED) % m64;
            let skip = identity_hash(&bytes, SKIP_SEED) % (m64 - 1) + 1;
            (offset, skip, 0)
        })
        .collect();

    const EMPTY: usize = usize::MAX;
    let mut table = vec![EMPTY; m as usize];
    let mut filled = 0usize;
    loop {
        for (rank, (offset, skip, next)) in prefs.iter_mut().enumerate() {
            // The preference list is a permutation of all M slots (M prime, 0 < skip < M)
            // and fewer than M are taken, so a free one comes within M steps.
            let mut slot = ((*offset + *next * *skip) % m64) as usize;
            while table[slot] != EMPTY {
                *next += 1;
                slot = ((*offset + *next * *skip) % m64) as usize;
            }
            table[slot] = order[rank];
            *next += 1;
            filled += 1;
            if filled == table.len() {
                return Ok(table);
            }
        }
    }
}

#[cfg(test)]
#[path = "maglev_tests.rs"]
mod tests;

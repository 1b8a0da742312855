//! Sets of (protocol, destination port): the value a compiled peer prefix maps to.

use std::collections::BTreeMap;

use super::view::Proto;

/// Allowed destination ports per protocol, as sorted, disjoint, non-adjacent inclusive
/// ranges. Empty: nothing is allowed (an `except` hole, or a peer whose rules all named
/// ports this destination does not have).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSet {
    ranges: BTreeMap<Proto, Vec<(u16, u16)>>,
}

impl PortSet {
    /// Every port of every protocol (a rule without `ports`).
    pub fn all() -> Self {
        let mut s = Self::default();
        for proto in Proto::ALL {
            s.insert(proto, 0, u16::MAX);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Adds `lo..=hi` of `proto` (`lo <= hi`).
    pub fn insert(&mut self, proto: Proto, lo: u16, hi: u16) {
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        let ranges = self.ranges.entry(proto).or_default();
        ranges.push((lo, hi));
        ranges.sort_unstable();
        coalesce(ranges);
    }

    /// Adds every port of `other` (one merge per protocol; nothing to do for ranges
    /// already equal).
    pub fn union_with(&mut self, other: &PortSet) {
        for (&proto, theirs) in &other.ranges {
            match self.ranges.get_mut(&proto) {
                None => {
                    self.ranges.insert(proto, theirs.clone());
                }
                Some(ours) if ours == theirs => {}
                Some(ours) => {
                    let mut merged = Vec::with_capacity(ours.len() + theirs.len());
                    let (mut a, mut b) = (ours.iter().peekable(), theirs.iter().peekable());
                    loop {
                        let next = match (a.peek(), b.peek()) {
                            (Some(x), Some(y)) if x <= y => a.next(),
                            (Some(_), Some(_)) => b.next(),
                            (Some(_), None) => a.next(),
                            (None, _) => b.next(),
                        };
                        match next {
                            Some(&r) => merged.push(r),
                            None => break,
                        }
                    }
                    coalesce(&mut merged);
                    *ours = merged;
                }
            }
        }
    }

    pub fn contains(&self, proto: Proto, port: u16) -> bool {
        self.ranges
            .get(&proto)
            .is_some_and(|r| r.iter().any(|&(lo, hi)| lo <= port && port <= hi))
    }

    /// The ranges of `proto`.
    pub fn ranges(&self, proto: Proto) -> &[(u16, u16)] {
        self.ranges.get(&proto).map_or(&[], Vec::as_slice)
    }

    /// The set as aligned port blocks `(proto, first port, prefix length over the 16 port
    /// bits)`, the keys of an LPM trie over (protocol, port): a range `lo..=hi` becomes at
    /// most 30 blocks, `0..=65535` one block of length 0.
    pub fn blocks(&self) -> Vec<(Proto, u16, u8)> {
        let mut out = Vec::new();
        for (&proto, ranges) in &self.ranges {
            for &(lo, hi) in ranges {
                let (mut lo, hi) = (u32::from(lo), u32::from(hi));
                while lo <= hi {
                    // The largest aligned block starting at lo that stays within hi.
                    let mut size = if lo == 0 {
                        1 << 16
                    } else {
                        lo & lo.wrapping_neg()
                    };
                    while lo + size - 1 > hi {
                        size >>= 1;
                    }
                    let len = 16 - size.trailing_zeros() as u8;
                    out.push((proto, lo as u16, len));
                    lo += size;
                }
            }
        }
        out
    }
}

/// Merges overlapping and adjacent ranges of a sorted list, in place.
fn coalesce(ranges: &mut Vec<(u16, u16)>) {
    let mut out = 0;
    for i in 0..ranges.len() {
        let (l, h) = ranges[i];
        if out > 0 && u32::from(l) <= u32::from(ranges[out - 1].1) + 1 {
            ranges[out - 1].1 = ranges[out - 1].1.max(h);
        } else {
            ranges[out] = (l, h);
            out += 1;
        }
    }
    ranges.truncate(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        let mut s = PortSet::default();
        s.insert(Proto::Tcp, 80, 81);
        s.insert(Proto::Tcp, 82, 90);
        s.insert(Proto::Tcp, 100, 100);
        s.insert(Proto::Udp, 53, 53);
        assert_eq!(s.ranges(Proto::Tcp), &[(80, 90), (100, 100)]);
        assert_eq!(s.ranges(Proto::Udp), &[(53, 53)]);
        assert!(s.contains(Proto::Tcp, 85) && !s.contains(Proto::Tcp, 91));
        assert!(!s.contains(Proto::Sctp, 53));
    }

    #[test]
    fn union_merges_like_inserting_each_range() {
        let sets: Vec<Vec<(Proto, u16, u16)>> = vec![
            vec![],
            vec![(Proto::Tcp, 80, 80)],
            vec![
                (Proto::Tcp, 79, 79),
                (Proto::Tcp, 81, 90),
                (Proto::Udp, 53, 53),
            ],
            vec![(Proto::Tcp, 0, u16::MAX)],
            vec![
                (Proto::Tcp, 10, 20),
                (Proto::Tcp, 40, 50),
                (Proto::Sctp, 1, 1),
            ],
            vec![(Proto::Tcp, 21, 39), (Proto::Udp, 54, 60)],
            vec![(Proto::Tcp, 5, 100)],
        ];
        let build = |v: &[(Proto, u16, u16)]| {
            let mut s = PortSet::default();
            for &(p, lo, hi) in v {
                s.insert(p, lo, hi);
            }
            s
        };
        for a in &sets {
            for b in &sets {
                let mut merged = build(a);
                merged.union_with(&build(b));
                let mut both = a.clone();
                both.extend(b.iter().copied());
                assert_eq!(merged, build(&both), "{a:?} + {b:?}");
            }
        }
    }

    #[test]
    fn blocks_cover_exactly_the_range() {
        let mut s = PortSet::default();
        s.insert(Proto::Tcp, 0, u16::MAX);
        assert_eq!(s.blocks(), vec![(Proto::Tcp, 0, 0)]);
        let mut s = PortSet::default();
        s.insert(Proto::Udp, 80, 80);
        assert_eq!(s.blocks(), vec![(Proto::Udp, 80, 16)]);
        let mut s = PortSet::default();
        // 1..=8: 1/16, 2/15 (2-3), 4/14 (4-7), 8/16.
        s.insert(Proto::Tcp, 1, 8);
        assert_eq!(
            s.blocks(),
            vec![
                (Proto::Tcp, 1, 16),
                (Proto::Tcp, 2, 15),
                (Proto::Tcp, 4, 14),
                (Proto::Tcp, 8, 16)
            ]
        );
        let mut s = PortSet::default();
        s.insert(Proto::Tcp, 1, u16::MAX);
        s.insert(Proto::Sctp, 32000, 32768);
        let blocks = s.blocks();
        assert!(blocks.len() <= 16 + 30);
        for port in 0..=u16::MAX {
            for proto in Proto::ALL {
                let hits = blocks
                    .iter()
                    .filter(|&&(p, first, len)| {
                        let shift = 16 - u32::from(len);
                        p == proto
                            && u32::from(port).checked_shr(shift).unwrap_or(0)
                                == u32::from(first).checked_shr(shift).unwrap_or(0)
                    })
                    .count();
                assert_eq!(
                    hits,
                    usize::from(s.contains(proto, port)),
                    "{proto:?} {port}"
                );
            }
        }
    }
}

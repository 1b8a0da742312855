use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use proptest::prelude::*;

use super::*;

fn v4(i: u32, port: u16) -> MaglevBackend {
    let [_, a, b, c] = i.to_be_bytes();
    MaglevBackend {
        addr: SocketAddr::new(
            Ipv4Addr::new(198, 18, a.max(1), c.wrapping_add(b)).into(),
            port,
        ),
        proto: 6,
    }
}

fn backends(n: usize) -> Vec<MaglevBackend> {
    (0..n as u32)
        .map(|i| MaglevBackend {
            addr: SocketAddr::new(
                Ipv4Addr::new(198, 18, (i / 250 + 1) as u8, (i % 250 + 1) as u8).into(),
                8080,
            ),
            proto: 6,
        })
        .collect()
}

/// The table as identities (what the kernel would reach), not input positions.
fn identities(set: &[MaglevBackend], size: TableSize) -> Vec<MaglevBackend> {
    populate(set, size)
        .expect("valid input")
        .into_iter()
        .map(|i| set[i])
        .collect()
}

fn moved(a: &[MaglevBackend], b: &[MaglevBackend]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

fn size(m: u32) -> TableSize {
    TableSize::new(m).expect("a valid size")
}

#[test]
fn the_annotation_overrides_the_daemon_default() {
    use LbAlgorithm::*;
    assert_eq!(LbAlgorithm::for_service(None, Random), Ok(Random));
    assert_eq!(LbAlgorithm::for_service(None, Maglev), Ok(Maglev));
    assert_eq!(LbAlgorithm::for_service(Some("maglev"), Random), Ok(Maglev));
    assert_eq!(LbAlgorithm::for_service(Some("random"), Maglev), Ok(Random));
    assert!(LbAlgorithm::for_service(Some("Maglev2"), Random).is_err());
}

#[test]
fn sizes_are_checked() {
    assert_eq!(TableSize::new(16_381).map(TableSize::get), Ok(16_381));
    assert_eq!(TableSize::new(251).map(TableSize::get), Ok(251));
    assert_eq!(TableSize::new(1001), Err(MaglevError::NotPrime(1001)));
    assert_eq!(TableSize::new(1000), Err(MaglevError::NotPrime(1000)));
    assert!(matches!(
        TableSize::new(32_749),
        Err(MaglevError::OutOfRange { size: 32_749, .. })
    ));
    assert!(matches!(
        TableSize::new(7),
        Err(MaglevError::OutOfRange { size: 7, .. })
    ));
    assert_eq!(TableSize::default().get(), 16_381);
    assert!("16381".parse::<TableSize>().is_ok());
    assert!("16380".parse::<TableSize>().is_err());
    assert!("x".parse::<TableSize>().is_err());
}

#[test]
fn bad_backend_sets_are_refused() {
    let set = backends(252);
    assert_eq!(
        populate(&set, size(251)),
        Err(MaglevError::TooManyBackends {
            backends: 252,
            size: 251
        })
    );
    let dup = vec![v4(1, 80), v4(2, 80), v4(1, 80)];
    assert_eq!(
        populate(&dup, size(251)),
        Err(MaglevError::Duplicate(v4(1, 80)))
    );
    assert_eq!(populate(&[], size(251)), Ok(Vec::new()));
}

#[test]
fn identity_includes_port_protocol_and_family() {
    // Same address, other port or protocol: a different backend with its own
    // preferences. Two backends differing only in port must both get entries.
    let a = v4(1, 80);
    let b = MaglevBackend { proto: 17, ..a };
    let c = v4(1, 81);
    let d = MaglevBackend {
        addr: SocketAddr::new(Ipv6Addr::new(0xfd00, 0x18, 0, 1, 0, 0, 0, 1).into(), 80),
        proto: 6,
    };
    let table = identities(&[a, b, c, d], size(251));
    for x in [a, b, c, d] {
        let n = table.iter().filter(|y| **y == x).count();
        assert!((62..=63).contains(&n), "{x:?} has {n} entries");
    }
}

#[test]
fn one_backend_takes_every_entry() {
    let table = populate(&[v4(3, 80)], size(251)).expect("valid");
    assert_eq!(table, vec![0; 251]);
}

/// Distinct backends (v4 and v6 mixed), 1..=max of them.
fn backend_set(max: usize) -> impl Strategy<Value = Vec<MaglevBackend>> {
    prop::collection::btree_set(
        (
            any::<bool>(),
            any::<u16>(),
            1u16..=65535,
            prop::sample::select(vec![6u8, 17]),
        ),
        1..=max,
    )
    .prop_map(|set| {
        set.into_iter()
            .map(|(v6, host, port, proto)| {
                let ip = if v6 {
                    Ipv6Addr::new(0xfd00, 0x18, 0, 1, 0, 0, 0, host).into()
                } else {
                    Ipv4Addr::new(198, 18, (host >> 8) as u8, host as u8).into()
                };
                MaglevBackend {
                    addr: SocketAddr::new(ip, port),
                    proto,
                }
            })
            .collect()
    })
}

fn table_size() -> impl Strategy<Value = TableSize> {
    prop::sample::select(vec![2039u32, 4093]).prop_map(size)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// (a) Deterministic, and independent of the input order.
    #[test]
    fn table_depends_only_on_the_set(
        (set, shuffled) in backend_set(20).prop_flat_map(|s| {
            let shuffled = Just(s.clone()).prop_shuffle();
            (Just(s), shuffled)
        }),
        m in table_size(),
    ) {
        let a = identities(&set, m);
        prop_assert_eq!(&a, &identities(&set, m));
        prop_assert_eq!(&a, &identities(&shuffled, m));
    }

    /// (b) Each of N backends gets floor(M/N) or ceil(M/N) entries (the paper's
    /// round-robin population), and every entry names a backend.
    #[test]
    fn entries_are_balanced(set in backend_set(40), m in table_size()) {
        let table = populate(&set, m).expect("valid");
        prop_assert_eq!(table.len(), m.get() as usize);
        let mut counts = vec![0usize; set.len()];
        for i in &table {
            counts[*i] += 1;
        }
        let n = set.len();
        let low = m.get() as usize / n;
        let high = low + usize::from(!(m.get() as usize).is_multiple_of(n));
        for c in counts {
            prop_assert!((low..=high).contains(&c), "{} not in {}..={}", c, low, high);
        }
    }

    /// (c) Removing one of N backends (or adding one) moves about 1/N of the entries:
    /// the removed backend's own entries must move, the rest move little. Bound: fewer
    /// than 3/N of all entries for M >= 100 N (measured: about 1.05/N for N = 10 and
    /// 2.1/N for N = 100 at M = 16381, see `disruption_figure_for_the_default_table`;
    /// Maglev trades a little extra disruption for its perfect balance).
    #[test]
    fn a_change_moves_about_one_nth(
        set in backend_set(20).prop_filter("two or more", |s| s.len() >= 2),
        pick in any::<prop::sample::Index>(),
        m in table_size(),
    ) {
        let n = set.len();
        prop_assume!(m.get() as usize >= 100 * n);
        let before = identities(&set, m);
        let gone = set[pick.index(n)];
        let rest: Vec<_> = set.iter().copied().filter(|b| *b != gone).collect();
        let after = identities(&rest, m);
        let changed = moved(&before, &after);
        let own = before.iter().filter(|b| **b == gone).count();
        // Every entry of the removed backend moved; nothing else need have.
        prop_assert!(changed >= own);
        prop_assert!(!after.contains(&gone));
        let bound = 3 * m.get() as usize / n;
        prop_assert!(changed < bound, "removal moved {} of {} (N={})", changed, m.get(), n);
        // Adding it back is the reverse change: the same number of entries.
        prop_assert_eq!(moved(&after, &identities(&set, m)), changed);
    }
}

/// The disruption figure quoted in the closing note (run with `--nocapture`).
#[test]
fn disruption_figure_for_the_default_table() {
    let m = size(16_381);
    for n in [10usize, 100] {
        let set = backends(n + 1);
        let full = identities(&set, m);
        let mut removal = BTreeMap::new();
        // Remove each of several backends in turn; add one (the (n+1)-th) to n.
        for gone in [0usize, n / 2, n - 1] {
            let rest: Vec<_> = set[..n]
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != gone)
                .map(|(_, b)| *b)
                .collect();
            let before = identities(&set[..n], m);
            let after = identities(&rest, m);
            let fraction = moved(&before, &after) as f64 / f64::from(m.get());
            removal.insert(gone, fraction);
            assert!(fraction < 3.0 / n as f64, "N={n} remove {gone}: {fraction}");
        }
        let before = identities(&set[..n], m);
        let added = moved(&before, &full) as f64 / f64::from(m.get());
        assert!(added < 3.0 / n as f64, "N={n} add: {added}");
        let removal: Vec<String> = removal.values().map(|f| format!("{:.4}", f)).collect();
        println!(
            "maglev M=16381 N={n}: 1/N={:.4}; removing one backend moved [{}] of the entries; adding one moved {added:.4}",
            1.0 / n as f64,
            removal.join(", "),
        );
    }
}

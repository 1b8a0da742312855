//! kube-proxy's nftables mode keeps everything in two tables, `ip kube-proxy` and
//! `ip6 kube-proxy`; removing them is the whole clean-up (pure part: which tables).

/// One `table <family> <name>` line of `nft list tables`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftTable {
    pub family: String,
    pub name: String,
}

impl std::fmt::Display for NftTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.family, self.name)
    }
}

/// The tables kube-proxy's nftables mode creates.
pub const KUBE_PROXY_TABLES: [(&str, &str); 2] = [("ip", "kube-proxy"), ("ip6", "kube-proxy")];

/// Parses `nft list tables` (lines `table ip kube-proxy`); other lines are ignored.
pub fn parse_tables(text: &str) -> Vec<NftTable> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("table"), Some(family), Some(name), None) => Some(NftTable {
                    family: family.to_owned(),
                    name: name.to_owned(),
                }),
                _ => None,
            }
        })
        .collect()
}

/// The listed tables that are kube-proxy's.
pub fn kube_proxy_tables(tables: &[NftTable]) -> Vec<NftTable> {
    tables
        .iter()
        .filter(|t| {
            KUBE_PROXY_TABLES
                .iter()
                .any(|(family, name)| t.family == *family && t.name == *name)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kube_proxys_tables_are_chosen() {
        let listed = parse_tables(
            "table ip kube-proxy\ntable ip6 kube-proxy\ntable inet kube-proxy\n\
             table ip nat\ntable ip filter\ntable inet foreign\n",
        );
        assert_eq!(listed.len(), 6);
        let chosen: Vec<String> = kube_proxy_tables(&listed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(chosen, ["ip kube-proxy", "ip6 kube-proxy"]);
    }

    #[test]
    fn odd_lines_are_ignored() {
        assert_eq!(parse_tables(""), []);
        assert_eq!(
            parse_tables("# nothing\ntable\ntable ip\ntable ip a b\n"),
            []
        );
    }
}

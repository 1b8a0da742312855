//! `inspect snat`: north-south flows SNATed to this node (client, the node port they
//! left with, backend). Conntrack state of the same flows: `inspect conntrack`.

use serde::Serialize;

use super::services::proto_name;
use crate::{cli::output::TableRow, dataplane::snat::SnatRecord};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnatRow {
    pub proto: String,
    pub client: String,
    pub node: String,
    pub backend: String,
}

impl TableRow for SnatRow {
    const HEADER: &'static [&'static str] = &["proto", "client", "snat to", "backend"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.proto.clone(),
            self.client.clone(),
            self.node.clone(),
            self.backend.clone(),
        ]
    }
}

pub fn rows(records: &[SnatRecord]) -> Vec<SnatRow> {
    records
        .iter()
        .map(|r| SnatRow {
            proto: proto_name(r.proto),
            client: r.client.to_string(),
            node: r.node.to_string(),
            backend: r.backend.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_client_node_port_and_backend() {
        let records = [SnatRecord {
            proto: 6,
            backend: "198.18.2.10:8080".parse().expect("literal"),
            node: "198.19.255.1:64712".parse().expect("literal"),
            client: "198.19.200.7:40000".parse().expect("literal"),
        }];
        assert_eq!(
            rows(&records)[0].cells(),
            [
                "tcp",
                "198.19.200.7:40000",
                "198.19.255.1:64712",
                "198.18.2.10:8080"
            ]
        );
    }
}

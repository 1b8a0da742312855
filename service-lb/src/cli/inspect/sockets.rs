//! `inspect sockets`: the socket-LB reverse maps: which socket (cookie) was sent to which
//! backend, and the frontend `recvmsg()`/`getpeername()` show it instead.

use serde::Serialize;

use crate::{cli::output::TableRow, dataplane::sock::SockRevRecord};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SocketRow {
    pub cookie: u64,
    pub backend: String,
    pub service_id: u32,
    pub frontend: String,
}

impl TableRow for SocketRow {
    const HEADER: &'static [&'static str] = &["socket cookie", "backend", "service", "shown as"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.cookie.to_string(),
            self.backend.clone(),
            self.service_id.to_string(),
            self.frontend.clone(),
        ]
    }
}

pub fn rows(records: &[SockRevRecord]) -> Vec<SocketRow> {
    records
        .iter()
        .map(|r| SocketRow {
            cookie: r.cookie,
            backend: r.backend.to_string(),
            service_id: r.service_id,
            frontend: r.frontend.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_backend_and_frontend() {
        let records = [SockRevRecord {
            cookie: 4097,
            backend: "[fd00:18:0:1::b]:8080".parse().expect("literal"),
            service_id: 3,
            frontend: "[fd00:19::10]:80".parse().expect("literal"),
        }];
        let rows = rows(&records);
        assert_eq!(
            rows[0].cells(),
            ["4097", "[fd00:18:0:1::b]:8080", "3", "[fd00:19::10]:80"]
        );
    }
}

//! `inspect counters`: packets and bytes per hook and reason, summed over CPUs.

use serde::Serialize;

use crate::{cli::output::TableRow, dataplane::CounterTotal};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CounterRow {
    pub hook: &'static str,
    pub reason: &'static str,
    pub drop: bool,
    pub packets: u64,
    pub bytes: u64,
}

impl TableRow for CounterRow {
    const HEADER: &'static [&'static str] = &["hook", "reason", "packets", "bytes"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.hook.into(),
            self.reason.into(),
            self.packets.to_string(),
            self.bytes.to_string(),
        ]
    }
}

/// Rows in hook x reason order; zero counters only with `all`.
pub fn rows(totals: &[CounterTotal], all: bool) -> Vec<CounterRow> {
    totals
        .iter()
        .filter(|t| all || t.packets != 0 || t.bytes != 0)
        .map(|t| CounterRow {
            hook: t.hook.name(),
            reason: t.reason.name(),
            drop: t.reason.is_drop(),
            packets: t.packets,
            bytes: t.bytes,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_lb_common::{Hook, Reason};

    #[test]
    fn zero_counters_are_hidden_unless_all() {
        let totals = [
            CounterTotal {
                hook: Hook::FromPod,
                reason: Reason::DnatNewFlow,
                packets: 3,
                bytes: 180,
            },
            CounterTotal {
                hook: Hook::ToPod,
                reason: Reason::DropNoBackend,
                packets: 0,
                bytes: 0,
            },
        ];
        let shown = rows(&totals, false);
        assert_eq!(shown.len(), 1);
        assert_eq!(
            (shown[0].hook, shown[0].reason, shown[0].packets),
            ("from_pod", "dnat_new_flow", 3)
        );
        let every = rows(&totals, true);
        assert_eq!(every.len(), 2);
        assert!(every[1].drop);
    }
}

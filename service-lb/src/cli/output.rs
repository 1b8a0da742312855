//! `-o table|json|yaml`: rows with serde field names, rendered by comfy-table, serde_json or
//! serde-saphyr.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// A row that knows its table columns.
pub trait TableRow: Serialize {
    const HEADER: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

pub fn render<R: TableRow>(rows: &[R], format: Format) -> anyhow::Result<String> {
    match format {
        Format::Json => Ok(serde_json::to_string_pretty(rows)?),
        Format::Yaml => Ok(serde_saphyr::to_string(&rows)?.trim_end().to_owned()),
        Format::Table => {
            let mut table = Table::new();
            table
                .load_preset(UTF8_BORDERS_ONLY)
                .set_header(R::HEADER.to_vec());
            for row in rows {
                table.add_row(row.cells());
            }
            Ok(table.to_string())
        }
    }
}

/// Writes `text` and a newline to stdout. A closed pipe (`inspect ... | head`) ends the
/// output quietly instead of panicking like `println!`; other write errors are returned.
pub fn print(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

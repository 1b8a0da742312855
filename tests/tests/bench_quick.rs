//! The benchmark at its smallest size (seconds), so its code cannot rot: the report and
//! the chart are written and every section has numbers. No timing is asserted.

use service_lb_tests::{
    bench::{self, BenchConfig},
    privileges::require_root,
};

#[test]
fn smallest_run_writes_a_report_with_numbers_in_every_section() -> anyhow::Result<()> {
    if !require_root("bench_quick") {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("slb-bench-quick-{}", std::process::id()));
    let out = dir.join("benchmarks.md");
    let config = BenchConfig::smallest();
    let outcome = bench::run(&config, &out, "cargo test --test bench_quick")?;

    let markdown = std::fs::read_to_string(&outcome.markdown_path)?;
    let svg = std::fs::read_to_string(&outcome.chart_path)?;

    assert!(markdown.contains("# service-lb benchmarks"), "{markdown}");
    assert!(
        markdown.contains(&outcome.report.machine.kernel),
        "{markdown}"
    );
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
    assert!(!outcome.report.sections.is_empty());
    for section in &outcome.report.sections {
        assert!(
            section.failures.is_empty(),
            "{:?}: {:?}",
            section.title,
            section.failures
        );
        assert!(
            !section.rows.is_empty(),
            "section {:?} has no rows",
            section.title
        );
        for row in &section.rows {
            assert_eq!(
                row.len(),
                section.headers.len(),
                "{:?}: {row:?}",
                section.title
            );
            // Every figure after the first column parses as a positive number (a
            // measurement happened); ratio columns end in ×; error counts may be 0.
            for (cell, header) in row.iter().zip(&section.headers).skip(1) {
                let figure = cell.trim_end_matches('×').replace(',', "");
                let value: f64 = figure
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{:?}: {header} {cell:?}: {e}", section.title))?;
                if header == "errors" {
                    assert!(value >= 0.0, "{:?}: {header} {cell:?}", section.title);
                } else {
                    assert!(value > 0.0, "{:?}: {header} {cell:?}", section.title);
                }
            }
        }
        assert!(
            markdown.contains(&format!("## {}", section.title)),
            "section {:?} missing from the markdown",
            section.title
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

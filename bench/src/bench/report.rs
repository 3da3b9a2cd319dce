//! The result rows of `percore bench` and their renderings: the terminal table, markdown, CSV
//! and JSON (`--json` prints the rows as a JSON array; `--save` writes all of them).

use serde::{Deserialize, Serialize};

/// One line of the result table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Row {
    /// Server name (`percore`, a peer's name).
    pub server: String,
    /// I/O backend (percore: epoll/uring; built-in peers: tokio/epoll; `--peer`: external;
    /// `--raw-peer`: raw tcp).
    pub backend: String,
    /// What drove the server: `percore load`, `load_test`, `peerload ws` or `peerload raw`.
    #[serde(default = "default_generator")]
    pub generator: String,
    /// Scenario name.
    pub scenario: String,
    /// Connections established.
    pub connections: u64,
    /// Messages (echoes or deliveries) per second; open loop: received per second.
    pub msgs_per_s: f64,
    /// Server CPU time per message, µs.
    pub cpu_us_per_msg: Option<f64>,
    /// Latency percentiles, µs (None when the generator measures no latency).
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// 99.9th percentile.
    pub p999_us: Option<f64>,
    /// Largest latency.
    #[serde(default)]
    pub max_us: Option<f64>,
    /// Server RSS at the end of the window, KiB.
    pub rss_kb: Option<u64>,
    /// Load generator CPU time per message, µs (near 1 s/s of CPU: the load was the limit).
    pub load_cpu_us_per_msg: Option<f64>,
    /// Load generator errors.
    pub errors: u64,
    /// Open loop: the offered rate, messages per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_per_s: Option<f64>,
    /// Open loop: the offered rate as a percentage of the server's closed-loop maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_pct: Option<f64>,
    /// Why the cell has no figures, or what to know about them.
    pub note: Option<String>,
}

fn default_generator() -> String {
    "percore load".into()
}

impl Row {
    /// A row without figures, saying why.
    pub fn empty(
        server: &str,
        backend: &str,
        generator: &str,
        scenario: &str,
        note: String,
    ) -> Row {
        Row {
            server: server.into(),
            backend: backend.into(),
            generator: generator.into(),
            scenario: scenario.into(),
            connections: 0,
            msgs_per_s: 0.0,
            cpu_us_per_msg: None,
            p50_us: None,
            p99_us: None,
            p999_us: None,
            max_us: None,
            rss_kb: None,
            load_cpu_us_per_msg: None,
            errors: 0,
            offered_per_s: None,
            load_pct: None,
            note: Some(note),
        }
    }

    /// Whether the row has figures (a row that only carries a note does not).
    pub fn measured(&self) -> bool {
        self.connections > 0 || self.msgs_per_s > 0.0
    }
}

/// One row for several runs of a cell: the median of each figure (upper median for an even
/// count), errors summed, the largest RSS. A run that failed (no figures) is reported as is.
pub fn median_row(runs: &[Row]) -> Option<Row> {
    let first = runs.first()?;
    if let Some(failed) = runs.iter().find(|r| !r.measured()) {
        return Some(failed.clone());
    }
    if runs.len() == 1 {
        return Some(first.clone());
    }
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    let m = |f: fn(&Row) -> f64| median(runs.iter().map(f).collect());
    let mo = |f: fn(&Row) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    let mut notes: Vec<&str> = runs.iter().filter_map(|r| r.note.as_deref()).collect();
    notes.dedup();
    Some(Row {
        connections: runs.iter().map(|r| r.connections).min().unwrap_or(0),
        msgs_per_s: m(|r| r.msgs_per_s),
        cpu_us_per_msg: mo(|r| r.cpu_us_per_msg),
        p50_us: mo(|r| r.p50_us),
        p99_us: mo(|r| r.p99_us),
        p999_us: mo(|r| r.p999_us),
        max_us: mo(|r| r.max_us),
        rss_kb: runs.iter().filter_map(|r| r.rss_kb).max(),
        load_cpu_us_per_msg: mo(|r| r.load_cpu_us_per_msg),
        errors: runs.iter().map(|r| r.errors).sum(),
        offered_per_s: mo(|r| r.offered_per_s),
        load_pct: mo(|r| r.load_pct),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
        ..first.clone()
    })
}

/// Columns of the table, markdown and CSV: (terminal/markdown heading, CSV name).
const COLUMNS: &[(&str, &str)] = &[
    ("server", "server"),
    ("backend", "backend"),
    ("generator", "generator"),
    ("scenario", "scenario"),
    ("conns", "connections"),
    ("msgs/s", "msgs_per_s"),
    ("cpu µs/msg", "cpu_us_per_msg"),
    ("p50 µs", "p50_us"),
    ("p99 µs", "p99_us"),
    ("p99.9 µs", "p999_us"),
    ("max µs", "max_us"),
    ("rss MiB", "rss_kb"),
    ("load µs/msg", "load_cpu_us_per_msg"),
    ("errors", "errors"),
    ("offered/s", "offered_per_s"),
    ("load %", "load_pct"),
];

/// Left-aligned (text) columns come first.
const TEXT_COLUMNS: usize = 4;

/// Columns shown for `rows`: the open-loop ones only when some row has them.
fn shown(rows: &[Row]) -> Vec<usize> {
    let open = rows.iter().any(|r| r.offered_per_s.is_some());
    (0..COLUMNS.len())
        .filter(|&i| open || !matches!(COLUMNS[i].1, "offered_per_s" | "load_pct"))
        .collect()
}

fn row_cells(r: &Row) -> Vec<String> {
    let na = || "-".to_string();
    let f = |v: Option<f64>, digits: usize| v.map(|v| format!("{v:.digits$}")).unwrap_or_else(na);
    let measured = r.measured();
    vec![
        r.server.clone(),
        r.backend.clone(),
        r.generator.clone(),
        r.scenario.clone(),
        r.connections.to_string(),
        if measured {
            format!("{:.0}", r.msgs_per_s)
        } else {
            na()
        },
        f(r.cpu_us_per_msg, 2),
        f(r.p50_us, 1),
        f(r.p99_us, 1),
        f(r.p999_us, 1),
        f(r.max_us, 0),
        r.rss_kb
            .map(|v| format!("{:.1}", v as f64 / 1024.0))
            .unwrap_or_else(na),
        f(r.load_cpu_us_per_msg, 2),
        r.errors.to_string(),
        f(r.offered_per_s, 0),
        f(r.load_pct, 0),
    ]
}

/// Render rows as an aligned plain-text table (notes on their own line under the row).
pub fn table(rows: &[Row]) -> String {
    let cols = shown(rows);
    let head: Vec<String> = cols.iter().map(|&i| COLUMNS[i].0.to_string()).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let c = row_cells(r);
            cols.iter().map(|&i| c[i].clone()).collect()
        })
        .collect();
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in &cells {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, r: &[String]| {
        for (i, c) in r.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if i < TEXT_COLUMNS {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
            s.push_str("  ");
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
    };
    line(&mut s, &head);
    for (r, c) in rows.iter().zip(&cells) {
        line(&mut s, c);
        if let Some(n) = &r.note {
            s.push_str(&format!("    ({n})\n"));
        }
    }
    s
}

/// Rows as a markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let cols = shown(rows);
    let mut s = String::from("|");
    for &i in &cols {
        s += &format!(" {} |", COLUMNS[i].0);
    }
    s += " note |\n|";
    for &i in &cols {
        s += if i < TEXT_COLUMNS { "---|" } else { "--:|" };
    }
    s += "---|\n";
    for r in rows {
        let c = row_cells(r);
        let note = r.note.as_deref().unwrap_or("").replace('|', "/");
        let cells: Vec<&str> = cols.iter().map(|&i| c[i].as_str()).collect();
        s += &format!("| {} | {note} |\n", cells.join(" | "));
    }
    s
}

/// Rows as CSV, every column, raw values (empty when absent).
pub fn csv(rows: &[Row]) -> String {
    let mut s: String = COLUMNS.iter().map(|c| c.1).collect::<Vec<_>>().join(",");
    s += ",note\n";
    let o = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let text = |t: &str| t.replace([',', '\n'], ";");
    for r in rows {
        let fields = [
            text(&r.server),
            text(&r.backend),
            text(&r.generator),
            text(&r.scenario),
            r.connections.to_string(),
            r.msgs_per_s.to_string(),
            o(r.cpu_us_per_msg),
            o(r.p50_us),
            o(r.p99_us),
            o(r.p999_us),
            o(r.max_us),
            r.rss_kb.map(|v| v.to_string()).unwrap_or_default(),
            o(r.load_cpu_us_per_msg),
            r.errors.to_string(),
            o(r.offered_per_s),
            o(r.load_pct),
            text(r.note.as_deref().unwrap_or("")),
        ];
        s += &fields.join(",");
        s.push('\n');
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn row(server: &str, note: Option<&str>) -> Row {
        Row {
            server: server.into(),
            backend: "epoll".into(),
            generator: "percore load".into(),
            scenario: "echo 100 x 20 B".into(),
            connections: 100,
            msgs_per_s: 12345.0,
            cpu_us_per_msg: Some(4.567),
            p50_us: Some(10.0),
            p99_us: Some(20.0),
            p999_us: Some(30.0),
            max_us: Some(40.0),
            rss_kb: Some(2048),
            load_cpu_us_per_msg: Some(3.0),
            errors: 0,
            offered_per_s: None,
            load_pct: None,
            note: note.map(String::from),
        }
    }

    #[test]
    fn table_has_one_line_per_row_plus_header_and_notes() {
        let t = table(&[
            row("percore", None),
            Row::empty(
                "fastwebsockets",
                "tokio/epoll",
                "percore load",
                "x",
                "skipped: x".into(),
            ),
        ]);
        assert_eq!(t.lines().count(), 4);
        assert!(t.contains("4.57"));
        assert!(t.contains("(skipped: x)"));
        assert!(t.lines().next().unwrap().contains("generator"));
        assert!(!t.contains("offered"));
    }

    #[test]
    fn open_loop_columns_appear_only_with_open_loop_rows() {
        let mut r = row("percore", None);
        r.offered_per_s = Some(5000.0);
        r.load_pct = Some(50.0);
        let t = table(&[r.clone()]);
        assert!(t.contains("offered/s") && t.contains("5000") && t.contains("load %"));
        let m = markdown(&[r]);
        assert!(m.lines().next().unwrap().contains("offered/s"));
        assert_eq!(m.lines().nth(1).unwrap().matches('|').count(), 18);
    }

    #[test]
    fn a_generator_without_latency_shows_dashes_not_zeros() {
        let mut r = row("uwebsockets", None);
        r.generator = "load_test".into();
        r.p50_us = None;
        r.p99_us = None;
        r.p999_us = None;
        r.max_us = None;
        let t = table(&[r.clone()]);
        let line = t.lines().nth(1).unwrap();
        assert!(line.contains("load_test"));
        assert_eq!(
            line.matches(" - ").count() + usize::from(line.ends_with('-')),
            4,
            "{line}"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["p99_us"].is_null());
        assert_eq!(v["generator"], "load_test");
        assert!(v.get("offered_per_s").is_none());
    }

    #[test]
    fn csv_escapes_commas_in_notes_and_has_every_column() {
        let c = csv(&[row("percore", Some("a, b"))]);
        assert_eq!(c.lines().count(), 2);
        let n = c.lines().next().unwrap().split(',').count();
        assert_eq!(n, COLUMNS.len() + 1);
        assert_eq!(c.lines().nth(1).unwrap().split(',').count(), n);
    }

    #[test]
    fn rows_saved_before_the_generator_column_still_load() {
        let old = r#"{"server":"percore","backend":"epoll","scenario":"echo 100 x 20 B",
            "connections":100,"msgs_per_s":1.0,"cpu_us_per_msg":5.0,"p50_us":1.0,"p99_us":2.0,
            "p999_us":3.0,"rss_kb":10,"load_cpu_us_per_msg":4.0,"errors":0,"note":null}"#;
        let r: Row = serde_json::from_str(old).unwrap();
        assert_eq!(r.generator, "percore load");
        assert_eq!(r.p99_us, Some(2.0));
        assert_eq!(r.max_us, None);
    }

    #[test]
    fn repeated_runs_report_the_median_of_each_figure_and_all_errors() {
        let mut a = row("percore", None);
        let mut b = row("percore", None);
        let c = row("percore", None);
        a.cpu_us_per_msg = Some(9.0);
        a.errors = 1;
        b.cpu_us_per_msg = Some(3.0);
        b.msgs_per_s = 1.0;
        let m = median_row(&[a, b, c]).unwrap();
        assert_eq!(m.cpu_us_per_msg, Some(4.567));
        assert_eq!(m.msgs_per_s, 12345.0);
        assert_eq!(m.errors, 1);
        let failed = Row::empty(
            "percore",
            "epoll",
            "percore load",
            "x",
            "did not start".into(),
        );
        assert!(median_row(&[row("percore", None), failed])
            .unwrap()
            .note
            .is_some());
        assert!(median_row(&[]).is_none());
    }
}

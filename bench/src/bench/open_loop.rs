//! `percore bench --open-loop 25,50,80`: latency at fixed offered rates.
//!
//! For each server, each repetition first measures its maximum: the rate `percore load`
//! reaches in a closed loop on the open-loop cell (10,000 connections × 20 B by default).
//! Then, for each percentage, `percore load --rate` offers that share of the highest maximum
//! of the repetition (`--open-loop-base best`, the default: every server gets the same rates,
//! so latencies compare at the same load) or of the server's own (`own`), on a fixed schedule
//! spread over all connections, and the latency of every message
//! counts from its intended send time (coordinated omission corrected; see load/schedule.rs).
//! Servers alternate within each step of a repetition, as in the matrix; the table reports
//! the medians over the repetitions.
//!
//! Only `percore load` keeps an open loop (load_test and peerload send a message when the
//! last returns), so it drives every WebSocket server here whatever `--generator` says; raw
//! TCP peers get a row saying so.

use super::generator::Generator;
use super::report::{median_row, Row};
use super::server::ServerKind;
use super::{count_label, run_cell, size_label, BenchArgs, Scenario};

/// Whose closed-loop maximum the percentages are of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Base {
    /// The highest maximum of the repetition's servers: the same offered rates for all.
    Best,
    /// Each server's own maximum: the same share of what each sustains.
    Own,
}

/// The offered rate (msg/s) of `pct` for the server whose maximum is `own`, given the
/// repetition's maxima `all`.
pub fn offered_rate(base: Base, own: f64, all: &[Option<f64>], pct: f64) -> f64 {
    let m = match base {
        Base::Own => own,
        Base::Best => all.iter().flatten().copied().fold(own, f64::max),
    };
    (m * pct / 100.0).round().max(1.0)
}

/// Offered rates as percentages of a closed-loop maximum.
pub fn parse_percentages(v: &[f64]) -> Result<Vec<f64>, String> {
    if v.is_empty() {
        return Err("--open-loop needs percentages, e.g. --open-loop 25,50,80".into());
    }
    for &p in v {
        if !(p > 0.0 && p <= 200.0) {
            return Err(format!(
                "--open-loop {p}: a percentage of the closed-loop maximum must be in (0, 200]"
            ));
        }
    }
    Ok(v.to_vec())
}

/// Below this share of the offered rate answered inside the window, the row says so.
const SHORTFALL: f64 = 0.97;

/// Name of the open-loop cell.
pub fn cell_name(connections: u32, size: usize) -> String {
    format!("open {} x {}", count_label(connections), size_label(size))
}

/// Run the open-loop table for `kinds`.
pub fn run(args: &BenchArgs, kinds: &[ServerKind], pcts: &[f64], duration: f64) -> Vec<Row> {
    let cell = cell_name(args.open_loop_connections, args.open_loop_size);
    let scenario = |name: String| Scenario {
        name,
        connections: args.open_loop_connections,
        size: args.open_loop_size,
        broadcast: false,
    };
    let max_sc = scenario(format!("{cell} max (closed loop)"));
    let pct_sc: Vec<Scenario> = pcts
        .iter()
        .map(|p| scenario(format!("{cell} @ {p}%")))
        .collect();
    let g = Generator::Percore;
    // runs[step][server]: step 0 is the maximum, then one step per percentage.
    let mut runs: Vec<Vec<Vec<Row>>> = vec![vec![Vec::new(); kinds.len()]; pcts.len() + 1];
    let mut skipped: Vec<Option<Row>> = kinds
        .iter()
        .map(|k| {
            if k.raw() {
                return Some(Row::empty(
                    k.name(),
                    k.backend(),
                    g.label(),
                    &max_sc.name,
                    "skipped: raw TCP; the open-loop generator (percore load) speaks WebSocket"
                        .into(),
                ));
            }
            g.cannot(&max_sc, k)
                .map(|why| Row::empty(k.name(), k.backend(), g.label(), &max_sc.name, why))
        })
        .collect();
    for round in 0..args.repeat.max(1) {
        let mut max = vec![None; kinds.len()];
        for (i, k) in kinds.iter().enumerate() {
            if skipped[i].is_some() {
                continue;
            }
            super::announce(args, k, &g, &max_sc, round);
            let row = run_cell(args, k, &g, &max_sc, duration, None);
            if row.measured() && row.msgs_per_s > 0.0 {
                max[i] = Some(row.msgs_per_s);
            } else if round == 0 {
                skipped[i] = Some(row.clone());
            }
            runs[0][i].push(row);
        }
        for (j, (&pct, sc)) in pcts.iter().zip(&pct_sc).enumerate() {
            for (i, k) in kinds.iter().enumerate() {
                let Some(m) = max[i] else { continue };
                let rate = offered_rate(args.open_loop_base, m, &max, pct);
                super::announce(args, k, &g, sc, round);
                let mut row = run_cell(args, k, &g, sc, duration, Some(rate));
                row.offered_per_s = Some(rate);
                row.load_pct = Some(pct);
                if args.open_loop_base == Base::Best {
                    let own = format!("{:.0} % of its own maximum", rate / m * 100.0);
                    row.note = Some(match row.note.take() {
                        Some(n) => format!("{own}; {n}"),
                        None => own,
                    });
                }
                if row.measured() && row.msgs_per_s < SHORTFALL * rate {
                    let short = format!(
                        "answered {:.0} % of the offered rate in the window",
                        row.msgs_per_s / rate * 100.0
                    );
                    row.note = Some(match row.note.take() {
                        Some(n) => format!("{short}; {n}"),
                        None => short,
                    });
                }
                runs[j + 1][i].push(row);
            }
        }
    }
    let mut rows = Vec::new();
    for (step, per_server) in runs.iter().enumerate() {
        for (i, r) in per_server.iter().enumerate() {
            match (&skipped[i], step) {
                (Some(s), 0) => rows.push(s.clone()),
                (Some(_), _) => {}
                (None, _) => rows.extend(median_row(r)),
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_must_be_a_share_of_the_maximum() {
        assert_eq!(
            parse_percentages(&[25.0, 50.0, 80.0]).unwrap(),
            [25.0, 50.0, 80.0]
        );
        assert!(parse_percentages(&[]).is_err());
        assert!(parse_percentages(&[0.0]).is_err());
        assert!(parse_percentages(&[250.0]).is_err());
        assert!(parse_percentages(&[f64::NAN]).is_err());
        assert!(parse_percentages(&[120.0]).is_ok());
    }

    #[test]
    fn the_best_base_offers_every_server_the_same_rate_the_own_base_its_share() {
        let all = [Some(100_000.0), None, Some(150_000.0), Some(120_000.0)];
        for own in [100_000.0, 150_000.0, 120_000.0] {
            assert_eq!(offered_rate(Base::Best, own, &all, 50.0), 75_000.0);
        }
        assert_eq!(offered_rate(Base::Own, 100_000.0, &all, 50.0), 50_000.0);
        assert_eq!(offered_rate(Base::Own, 120_000.0, &all, 25.0), 30_000.0);
        // No other maximum known: its own.
        assert_eq!(offered_rate(Base::Best, 80_000.0, &[None], 80.0), 64_000.0);
        // Never below one message per second.
        assert_eq!(offered_rate(Base::Own, 1.0, &[], 25.0), 1.0);
    }

    #[test]
    fn the_cell_is_named_by_connections_and_size() {
        assert_eq!(cell_name(10_000, 20), "open 10k x 20 B");
        assert_eq!(cell_name(100, 16 << 10), "open 100 x 16 KiB");
    }
}

//! SVG charts of a result set (written by `percore bench --save`): server CPU per message,
//! latency percentiles, RSS per connection, and the open-loop latency curves when the set has
//! them.
//!
//! Drawn with plotters' SVG backend and no font backend: text is written as SVG `<text>`
//! elements (the viewer renders it with its own fonts) and laid out with plotters' built-in
//! size estimate, so rendering needs no system fonts or fontconfig.

use plotters::prelude::*;

use super::report::Row;

/// One chart: a file name suffix and the SVG document.
pub struct Chart {
    /// Appended to the save prefix: `-cpu.svg`, ...
    pub suffix: &'static str,
    /// What it shows (a caption for the markdown file).
    pub title: String,
    /// The SVG document.
    pub svg: String,
}

const WIDTH: u32 = 1100;
const FONT: &str = "sans-serif";

/// Every chart `rows` has data for.
pub fn render_all(rows: &[Row]) -> Result<Vec<Chart>, String> {
    let mut out = Vec::new();
    let labels = Labels::new(rows);
    // The matrix (closed loop); the open-loop table's own rows go to its chart.
    let closed: Vec<&Row> = rows
        .iter()
        .filter(|r| r.measured() && r.offered_per_s.is_none() && !r.scenario.starts_with("open "))
        .collect();
    let cpu = Grouped::collect(&closed, &labels, |r| r.cpu_us_per_msg);
    if !cpu.is_empty() {
        let title = "Server CPU per message (µs, lower is better)".to_string();
        out.push(Chart {
            suffix: "-cpu.svg",
            svg: bar_panels(&title, "server CPU µs / message", &cpu, &labels)?,
            title,
        });
    }
    let lat = latency_panels(&closed, &labels);
    if !lat.is_empty() {
        let title = "Latency percentiles (µs, closed loop: round trips)".to_string();
        out.push(Chart {
            suffix: "-latency.svg",
            svg: latency_chart(&title, &lat, &labels)?,
            title,
        });
    }
    let rss = Grouped::collect(&closed, &labels, |r| {
        let kb = r.rss_kb?;
        (r.connections > 0).then(|| (kb * 1024) as f64 / r.connections as f64)
    });
    if !rss.is_empty() {
        let title = "Server RSS per connection (bytes, at the end of the window)".to_string();
        out.push(Chart {
            suffix: "-rss.svg",
            svg: bar_panels(&title, "bytes / connection", &rss, &labels)?,
            title,
        });
    }
    let open: Vec<&Row> = rows
        .iter()
        .filter(|r| r.measured() && r.offered_per_s.is_some() && r.load_pct.is_some())
        .collect();
    if !open.is_empty() {
        let title = "Open-loop latency against offered load (µs)".to_string();
        out.push(Chart {
            suffix: "-open-loop.svg",
            svg: open_loop_chart(&title, &open, &labels)?,
            title,
        });
    }
    Ok(out)
}

/// How each row's server is named in legends: the server, its backend for percore, and its
/// generator when the set was driven by more than one.
struct Labels {
    generators: bool,
    /// Every label in first-seen order: a server keeps its colour in every chart.
    order: Vec<String>,
}

impl Labels {
    fn new(rows: &[Row]) -> Labels {
        let mut g: Vec<&str> = rows.iter().map(|r| r.generator.as_str()).collect();
        g.sort_unstable();
        g.dedup();
        // A raw peer is always driven by peerload raw: that alone does not make it a mixed set.
        let ws = g.iter().filter(|g| **g != "peerload raw").count();
        let mut l = Labels {
            generators: ws > 1,
            order: Vec::new(),
        };
        for r in rows.iter().filter(|r| r.measured()) {
            let name = l.of(r);
            index_of(&mut l.order, &name);
        }
        l
    }

    fn color(&self, label: &str) -> RGBColor {
        color(self.order.iter().position(|x| x == label).unwrap_or(0))
    }

    fn of(&self, r: &Row) -> String {
        let mut s = r.server.clone();
        if r.server == "percore" {
            s = format!("percore {}", r.backend);
        }
        if self.generators && r.generator != "peerload raw" {
            s = format!("{s} ({})", r.generator);
        }
        s
    }
}

/// Values by group (scenario) and series (server), in first-seen order.
struct Grouped {
    groups: Vec<String>,
    series: Vec<String>,
    /// values[series][group]
    values: Vec<Vec<Option<f64>>>,
}

impl Grouped {
    fn collect(rows: &[&Row], labels: &Labels, f: impl Fn(&Row) -> Option<f64>) -> Grouped {
        let mut g = Grouped {
            groups: Vec::new(),
            series: Vec::new(),
            values: Vec::new(),
        };
        for r in rows {
            let Some(v) = f(r).filter(|v| v.is_finite() && *v >= 0.0) else {
                continue;
            };
            let gi = index_of(&mut g.groups, &r.scenario);
            let si = index_of(&mut g.series, &labels.of(r));
            if g.values.len() <= si {
                g.values.push(Vec::new());
            }
            for s in &mut g.values {
                s.resize(g.groups.len(), None);
            }
            g.values[si][gi] = Some(v);
        }
        g
    }

    fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    fn max(&self) -> f64 {
        self.values
            .iter()
            .flatten()
            .flatten()
            .fold(0.0f64, |a, &b| a.max(b))
    }
}

fn index_of(v: &mut Vec<String>, s: &str) -> usize {
    match v.iter().position(|x| x == s) {
        Some(i) => i,
        None => {
            v.push(s.to_string());
            v.len() - 1
        }
    }
}

fn color(i: usize) -> RGBColor {
    // Distinguishable on white, in a fixed order (percore's backends come first).
    const C: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing a chart: {e}")
}

/// A figure with three significant digits, without a useless fraction.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The page: white, a title, a legend strip of `series` under it; returns the area left for
/// the panels.
fn page<'a>(
    root: &Area<'a>,
    title: &str,
    series: &[String],
    labels: &Labels,
) -> Result<Area<'a>, String> {
    root.fill(&WHITE).map_err(err)?;
    let (head, body) = root.split_vertically(70);
    head.draw(&Text::new(
        title.to_string(),
        (12, 10),
        (FONT, 20).into_font().color(&BLACK),
    ))
    .map_err(err)?;
    let mut x = 12i32;
    for name in series {
        let c = labels.color(name);
        head.draw(&Rectangle::new([(x, 44), (x + 12, 56)], c.filled()))
            .map_err(err)?;
        head.draw(&Text::new(
            name.clone(),
            (x + 17, 43),
            (FONT, 13).into_font(),
        ))
        .map_err(err)?;
        // The built-in size estimate of a 13 px font: ~7 px per character.
        x += 17 + 7 * name.chars().count() as i32 + 20;
    }
    Ok(body)
}

fn grid(n: usize, cols: usize) -> (usize, usize) {
    let cols = cols.min(n).max(1);
    (n.div_ceil(cols), cols)
}

/// One panel per group (scenario) with one bar per series (server), each panel on its own
/// scale, the value above each bar.
fn bar_panels(title: &str, y_desc: &str, g: &Grouped, labels: &Labels) -> Result<String, String> {
    let (rows, cols) = grid(g.groups.len(), 3);
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (WIDTH, 70 + 300 * rows as u32)).into_drawing_area();
        let body = page(&root, title, &g.series, labels)?;
        for (gi, area) in body
            .split_evenly((rows, cols))
            .iter()
            .enumerate()
            .take(g.groups.len())
        {
            let bars: Vec<(usize, f64)> = g
                .values
                .iter()
                .enumerate()
                .filter_map(|(si, v)| Some((si, v.get(gi).copied().flatten()?)))
                .collect();
            let top = bars.iter().fold(0.0f64, |a, b| a.max(b.1)) * 1.2;
            let n = bars.len().max(1);
            let mut chart = ChartBuilder::on(area)
                .caption(&g.groups[gi], (FONT, 15))
                .margin(10)
                .x_label_area_size(8)
                .y_label_area_size(55)
                .build_cartesian_2d(0f64..n as f64, 0f64..top.max(1e-9))
                .map_err(err)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(6)
                .y_label_formatter(&|v| short(*v))
                .y_desc(y_desc)
                .label_style((FONT, 11))
                .light_line_style(TRANSPARENT)
                .draw()
                .map_err(err)?;
            for (i, &(si, v)) in bars.iter().enumerate() {
                let c = labels.color(&g.series[si]);
                let x = i as f64;
                chart
                    .draw_series([Rectangle::new([(x + 0.12, 0.0), (x + 0.88, v)], c.filled())])
                    .map_err(err)?;
                let style = TextStyle::from((FONT, 11).into_font()).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Bottom,
                    ),
                );
                chart
                    .draw_series([Text::new(short(v), (x + 0.5, v + top * 0.01), style)])
                    .map_err(err)?;
            }
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Per scenario: percentiles (groups: p50, p99, p99.9) by server (series).
fn latency_panels(rows: &[&Row], labels: &Labels) -> Vec<(String, Grouped)> {
    let mut scenarios: Vec<String> = Vec::new();
    for r in rows.iter().filter(|r| r.p50_us.is_some()) {
        index_of(&mut scenarios, &r.scenario);
    }
    scenarios
        .into_iter()
        .map(|sc| {
            let mut g = Grouped {
                groups: vec!["p50".into(), "p99".into(), "p99.9".into()],
                series: Vec::new(),
                values: Vec::new(),
            };
            for r in rows
                .iter()
                .filter(|r| r.scenario == sc && r.p50_us.is_some())
            {
                g.series.push(labels.of(r));
                g.values.push(vec![r.p50_us, r.p99_us, r.p999_us]);
            }
            (sc, g)
        })
        .collect()
}

fn latency_chart(
    title: &str,
    panels: &[(String, Grouped)],
    labels: &Labels,
) -> Result<String, String> {
    let mut series: Vec<String> = Vec::new();
    for (_, g) in panels {
        for s in &g.series {
            index_of(&mut series, s);
        }
    }
    let (rows, cols) = grid(panels.len(), 2);
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (WIDTH, 70 + 330 * rows as u32)).into_drawing_area();
        let body = page(&root, title, &series, labels)?;
        for ((sc, g), area) in panels.iter().zip(body.split_evenly((rows, cols)).iter()) {
            let top = (g.max() * 1.15).max(1e-9);
            let mut chart = ChartBuilder::on(area)
                .caption(sc, (FONT, 15))
                .margin(10)
                .x_label_area_size(28)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..3.0, 0f64..top)
                .map_err(err)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(6)
                .y_label_formatter(&|v| short(*v))
                .y_desc("µs")
                .label_style((FONT, 11))
                .light_line_style(TRANSPARENT)
                .draw()
                .map_err(err)?;
            let width = 0.8 / g.series.len().max(1) as f64;
            for (pi, name) in g.groups.iter().enumerate() {
                let style = TextStyle::from((FONT, 12).into_font()).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Top,
                    ),
                );
                // backend_coord is in the page's pixels: draw on the page itself.
                let (x, y) = chart.backend_coord(&(pi as f64 + 0.5, 0.0));
                root.draw(&Text::new(name.clone(), (x, y + 6), style))
                    .map_err(err)?;
            }
            for (si, name) in g.series.iter().enumerate() {
                let c = labels.color(name);
                let bars = g.values[si].iter().enumerate().filter_map(|(pi, v)| {
                    let x0 = pi as f64 + 0.1 + si as f64 * width;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.9, (*v)?)],
                        c.filled(),
                    ))
                });
                chart.draw_series(bars).map_err(err)?;
            }
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn open_loop_chart(title: &str, rows: &[&Row], labels: &Labels) -> Result<String, String> {
    type Pick = fn(&Row) -> Option<f64>;
    let panels: [(&str, Pick); 4] = [
        ("p50", |r| r.p50_us),
        ("p99", |r| r.p99_us),
        ("p99.9", |r| r.p999_us),
        ("max", |r| r.max_us),
    ];
    let mut series: Vec<String> = Vec::new();
    for r in rows {
        index_of(&mut series, &labels.of(r));
    }
    let x_max = rows
        .iter()
        .filter_map(|r| r.load_pct)
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 760)).into_drawing_area();
        let body = page(&root, title, &series, labels)?;
        for ((name, pick), area) in panels.iter().zip(body.split_evenly((2, 2)).iter()) {
            let values: Vec<f64> = rows
                .iter()
                .filter_map(|r| pick(r))
                .filter(|v| *v > 0.0)
                .collect();
            let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = values.iter().cloned().fold(0.0f64, f64::max);
            let caption = format!("{name} latency (µs)");
            // Latency near saturation spans decades: a log scale then, else a plain one.
            if values.is_empty() || hi / lo < 10.0 {
                let mut chart = ChartBuilder::on(area)
                    .caption(caption, (FONT, 15))
                    .margin(10)
                    .x_label_area_size(40)
                    .y_label_area_size(60)
                    .build_cartesian_2d(0f64..x_max, 0f64..(hi * 1.15).max(1.0))
                    .map_err(err)?;
                lines(&mut chart, rows, &series, labels, *pick)?;
            } else {
                let mut chart = ChartBuilder::on(area)
                    .caption(caption + ", log scale", (FONT, 15))
                    .margin(10)
                    .x_label_area_size(40)
                    .y_label_area_size(60)
                    .build_cartesian_2d(0f64..x_max, (lo / 1.5..hi * 1.5).log_scale())
                    .map_err(err)?;
                lines(&mut chart, rows, &series, labels, *pick)?;
            }
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The axes and one line per server: latency against offered load.
fn lines<'a, Y>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    rows: &[&Row],
    series: &[String],
    labels: &Labels,
    pick: fn(&Row) -> Option<f64>,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("offered load, % of the closed-loop maximum")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_labels(8)
        .y_label_formatter(&|v| short(*v))
        .label_style((FONT, 11))
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(err)?;
    for s in series {
        let c = labels.color(s);
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| &labels.of(r) == s)
            .filter_map(|r| Some((r.load_pct?, pick(r).filter(|v| *v > 0.0)?)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    Ok(())
}

//! A stacked-area chart as a standalone SVG file (no dependencies, opens in any browser).

use std::fmt::Write as _;

/// One stacked series.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Fill colour (`#rrggbb`).
    pub color: String,
    /// One value per bucket.
    pub values: Vec<f64>,
}

/// A stacked-area chart over time.
#[derive(Debug, Clone)]
pub struct StackedChart {
    /// Title above the plot.
    pub title: String,
    /// Y axis label.
    pub y_label: String,
    /// Seconds per bucket (the x axis is in seconds).
    pub bucket_secs: f64,
    /// Series, stacked bottom to top.
    pub series: Vec<Series>,
    /// Optional vertical markers: (x in seconds, label).
    pub markers: Vec<(f64, String)>,
}

const W: f64 = 900.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// Escapes text for XML content and attributes.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// A "nice" step for about `target` ticks over `0..max`.
fn nice_step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

impl StackedChart {
    /// Number of buckets (longest series).
    fn buckets(&self) -> usize {
        self.series
            .iter()
            .map(|s| s.values.len())
            .max()
            .unwrap_or(0)
    }

    /// Renders the chart as an SVG document.
    pub fn to_svg(&self) -> String {
        let n = self.buckets().max(1);
        let plot_w = W - LEFT - RIGHT;
        let plot_h = H - TOP - BOTTOM;
        // Cumulative tops per bucket.
        let mut tops: Vec<Vec<f64>> = Vec::with_capacity(self.series.len());
        let mut acc = vec![0.0f64; n];
        for s in &self.series {
            for (i, a) in acc.iter_mut().enumerate() {
                *a += s.values.get(i).copied().unwrap_or(0.0).max(0.0);
            }
            tops.push(acc.clone());
        }
        let max_y = acc.iter().copied().fold(0.0, f64::max).max(1.0);
        let y_step = nice_step(max_y, 5.0);
        let y_max = (max_y / y_step).ceil() * y_step;
        let x_span = n as f64 * self.bucket_secs;
        let x_step = nice_step(x_span.max(self.bucket_secs), 8.0);
        // Bucket i covers [i, i+1)·bucket; draw its value at the bucket's centre.
        let x = |i: f64| LEFT + (i + 0.5) / n as f64 * plot_w;
        let y = |v: f64| TOP + plot_h - v / y_max * plot_h;

        let mut o = String::new();
        let _ = writeln!(
            o,
            r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            o,
            r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#
        );
        let _ = writeln!(
            o,
            r#"<text x="{}" y="28" font-size="16" font-weight="bold">{}</text>"#,
            LEFT,
            escape(&self.title)
        );
        // Grid and y ticks.
        let mut v = 0.0;
        let mut guard = 0;
        while v <= y_max + 1e-9 && guard < 100 {
            let yy = y(v);
            let _ = writeln!(
                o,
                r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                yy + 4.0,
                fmt_num(v)
            );
            v += y_step;
            guard += 1;
        }
        // X ticks (seconds).
        let mut t = 0.0;
        guard = 0;
        while t <= x_span + 1e-9 && guard < 200 {
            let xx = LEFT + t / x_span.max(1e-9) * plot_w;
            let _ = writeln!(
                o,
                r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#999"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + plot_h,
                TOP + plot_h + 5.0,
                TOP + plot_h + 20.0,
                fmt_num(t)
            );
            t += x_step;
            guard += 1;
        }
        // Stacked areas, bottom to top: each polygon runs along its own top and back along the
        // top of the series below it.
        for (si, s) in self.series.iter().enumerate() {
            let top = &tops[si];
            let zero = vec![0.0; n];
            let base = if si == 0 { &zero } else { &tops[si - 1] };
            let mut pts = String::new();
            for (i, v) in top.iter().enumerate() {
                let _ = write!(pts, "{:.1},{:.1} ", x(i as f64), y(*v));
            }
            for (i, v) in base.iter().enumerate().rev() {
                let _ = write!(pts, "{:.1},{:.1} ", x(i as f64), y(*v));
            }
            let _ = writeln!(
                o,
                r#"<polygon class="series" data-label="{}" points="{}" fill="{}" fill-opacity="0.75" stroke="{}" stroke-width="1"/>"#,
                escape(&s.label),
                pts.trim_end(),
                escape(&s.color),
                escape(&s.color)
            );
        }
        // Markers.
        for (mi, (mx, label)) in self.markers.iter().enumerate() {
            let xx = LEFT + mx / x_span.max(1e-9) * plot_w;
            let _ = writeln!(
                o,
                r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#333" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
                TOP + plot_h,
                xx + 3.0,
                TOP + 12.0 + 14.0 * (mi % 4) as f64,
                escape(label)
            );
        }
        // Axes.
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
            TOP + plot_h,
            TOP + plot_h,
            LEFT + plot_w,
            TOP + plot_h
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>"#,
            LEFT + plot_w / 2.0,
            H - 15.0
        );
        let _ = writeln!(
            o,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + plot_h / 2.0,
            escape(&self.y_label)
        );
        // Legend (top of the stack first, like the areas).
        for (i, s) in self.series.iter().rev().enumerate() {
            let ly = TOP + 10.0 + i as f64 * 22.0;
            let lx = LEFT + plot_w + 20.0;
            let total: f64 = s.values.iter().sum::<f64>() * self.bucket_secs;
            let _ = writeln!(
                o,
                r#"<rect x="{lx:.1}" y="{:.1}" width="14" height="14" fill="{}"/><text x="{:.1}" y="{:.1}">{} ({})</text>"#,
                ly - 11.0,
                escape(&s.color),
                lx + 20.0,
                ly,
                escape(&s.label),
                total.round() as i64
            );
        }
        o.push_str("</svg>\n");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> StackedChart {
        StackedChart {
            title: "flood <gateway> & co".into(),
            y_label: "responses/s".into(),
            bucket_secs: 0.5,
            series: vec![
                Series {
                    label: "2xx".into(),
                    color: "#2e9e4f".into(),
                    values: vec![12.0, 4.0, 4.0, 4.0],
                },
                Series {
                    label: "429".into(),
                    color: "#e8a33d".into(),
                    values: vec![188.0, 196.0, 196.0, 196.0],
                },
            ],
            markers: vec![(1.0, "fault".into())],
        }
    }

    #[test]
    fn svg_is_well_formed_and_has_every_series() {
        let svg = chart().to_svg();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        let labels: Vec<_> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("series"))
            .filter_map(|n| n.attribute("data-label"))
            .collect();
        assert_eq!(labels, vec!["2xx", "429"]);
        // Each polygon has 2 points per bucket.
        for p in doc.descendants().filter(|n| n.has_tag_name("polygon")) {
            let pts = p.attribute("points").expect("points").split(' ').count();
            assert_eq!(pts, 8);
        }
        let text: String = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(text.contains("flood <gateway> & co"));
        assert!(text.contains("429 (388)"), "legend totals: {text}");
    }

    #[test]
    fn empty_chart_is_still_valid() {
        let c = StackedChart {
            title: "empty".into(),
            y_label: "y".into(),
            bucket_secs: 1.0,
            series: vec![],
            markers: vec![],
        };
        roxmltree::Document::parse(&c.to_svg()).expect("well-formed XML");
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
    }
}

//! Hand-written SVG charts: a line chart (one line per series) and a grouped bar chart, with
//! axes, ticks, axis labels, a title and a legend. Small on purpose: a plotting library would
//! weigh more than the rest of the harness.

use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// One line of a line chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed lines tell a second metric of the same system apart (p99 beside p50).
    pub dashed: bool,
    /// Index into the palette, so a system keeps its colour across charts.
    pub colour: usize,
}

/// A chart's frame: the plot area and the value ranges.
struct Frame {
    x_max: f64,
    y_max: f64,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        LEFT + v / self.x_max * (W - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - v / self.y_max * (H - TOP - BOTTOM)
    }
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `v` (positive).
fn nice_ceiling(v: f64) -> f64 {
    if v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|c| *c >= v * 0.999_999)
        .unwrap_or(10.0 * p)
}

fn tick_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{:.0}", v)
    } else if v.abs() >= 1.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{:.2}", v)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(out: &mut String, title: &str, x_label: &str, y_label: &str) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>\n",
        (LEFT + W - RIGHT) / 2.0,
        escape(title),
        (LEFT + W - RIGHT) / 2.0,
        H - 15.0,
        escape(x_label),
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        escape(y_label),
    );
}

fn y_axis(out: &mut String, f: &Frame) {
    for i in 0..=5 {
        let v = f.y_max * i as f64 / 5.0;
        let y = f.y(v);
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            tick_label(v)
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"black\"/>\
         <line x1=\"{LEFT}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
}

fn legend(out: &mut String, entries: &[(String, usize, bool)]) {
    for (i, (name, colour, dashed)) in entries.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 18.0;
        let x = W - RIGHT + 15.0;
        let dash = if *dashed {
            " stroke-dasharray=\"5,3\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"3\"{dash}/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            x + 22.0,
            COLOURS[colour % COLOURS.len()],
            x + 28.0,
            y + 4.0,
            escape(name)
        );
    }
}

/// A line chart; x and y axes start at 0.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let f = Frame {
        x_max: nice_ceiling(all().map(|p| p.0).fold(0.0, f64::max)),
        y_max: nice_ceiling(all().map(|p| p.1).fold(0.0, f64::max)),
    };
    let mut out = String::new();
    header(&mut out, title, x_label, y_label);
    y_axis(&mut out, &f);
    for i in 0..=5 {
        let v = f.x_max * i as f64 / 5.0;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            f.x(v),
            H - BOTTOM + 16.0,
            tick_label(v)
        );
    }
    for s in series {
        let colour = COLOURS[s.colour % COLOURS.len()];
        let mut pts = s.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", f.x(x), f.y(y)))
            .collect();
        let dash = if s.dashed {
            " stroke-dasharray=\"5,3\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            path.join(" ")
        );
        for &(x, y) in &pts {
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{}: {} → {}</title></circle>",
                f.x(x),
                f.y(y),
                escape(&s.name),
                tick_label(x),
                tick_label(y)
            );
        }
    }
    let entries: Vec<_> = series
        .iter()
        .map(|s| (s.name.clone(), s.colour, s.dashed))
        .collect();
    legend(&mut out, &entries);
    out.push_str("</svg>\n");
    out
}

/// A grouped bar chart: one group per category, one bar per series in each.
pub fn bar_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let y_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max);
    let f = Frame {
        x_max: 1.0,
        y_max: nice_ceiling(y_max),
    };
    let mut out = String::new();
    header(&mut out, title, x_label, y_label);
    y_axis(&mut out, &f);
    let group_w = (W - LEFT - RIGHT) / categories.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    for (c, cat) in categories.iter().enumerate() {
        let gx = LEFT + c as f64 * group_w + group_w * 0.1;
        for (s, (name, values)) in series.iter().enumerate() {
            let v = values.get(c).copied().unwrap_or(0.0);
            let (x, y) = (gx + s as f64 * bar_w, f.y(v));
            let _ = writeln!(
                out,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
                 <title>{} {}: {}</title></rect>",
                bar_w * 0.95,
                (H - BOTTOM - y).max(0.0),
                COLOURS[s % COLOURS.len()],
                escape(cat),
                escape(name),
                tick_label(v)
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            LEFT + (c as f64 + 0.5) * group_w,
            H - BOTTOM + 16.0,
            escape(cat)
        );
    }
    let entries: Vec<_> = series
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.clone(), i, false))
        .collect();
    legend(&mut out, &entries);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(nice_ceiling(1001.0), 2000.0);
    }

    #[test]
    fn charts_have_axes_labels_and_legend() {
        let s = line_chart(
            "Latency",
            "rate (req/s)",
            "µs",
            &[Series {
                name: "zmesh p50".into(),
                points: vec![(1000.0, 80.0), (4000.0, 95.0)],
                dashed: false,
                colour: 0,
            }],
        );
        for want in [
            "<svg",
            "Latency",
            "rate (req/s)",
            "zmesh p50",
            "<polyline",
            "</svg>",
        ] {
            assert!(s.contains(want), "{want} missing");
        }
        let b = bar_chart(
            "Shards",
            "shard",
            "fraction",
            &["a/0".into()],
            &[("busy".into(), vec![0.5]), ("idle".into(), vec![0.5])],
        );
        assert_eq!(b.matches("<rect x=").count(), 2);
    }
}

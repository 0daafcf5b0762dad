//! Inline SVG charts for the HTML report: latency-by-percentile curves and horizontal
//! bar charts. Plain SVG 1.1 elements with presentation attributes, no scripts and no
//! external resources, so the page renders anywhere offline.
//!
//! The percentile plot follows HdrHistogram's convention: the x axis is
//! log10(1 / (1 − p)), so 90 %, 99 %, 99.9 % ... are evenly spaced and the tail gets
//! as much room as the median. The y axis is logarithmic in latency, because tunnel and
//! direct curves differ by multiples, and the tail by orders of magnitude.

use std::fmt::Write as _;

use super::esc;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 340.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 56.0;

/// One curve: (quantile 0..=1, microseconds) points.
pub struct Series {
    pub label: String,
    pub color: String,
    pub dash: Option<&'static str>,
    pub points: Vec<(f64, f64)>,
}

/// A latency-by-percentile plot with an optional horizontal budget line.
pub fn percentile_plot(series: &[Series], budget_us: Option<f64>, decades: u32) -> String {
    let decades = f64::from(decades.clamp(2, 6));
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(budget_us)
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return String::from("<p class=\"empty\">no samples</p>");
    }
    let y_lo = lo.max(1.0).log10().floor();
    let y_hi = (hi.log10().ceil()).max(y_lo + 1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |q: f64| {
        let inv = if q >= 1.0 {
            decades
        } else {
            (1.0 / (1.0 - q)).log10().min(decades)
        };
        LEFT + plot_w * inv / decades
    };
    let y_of = |us: f64| TOP + plot_h * (1.0 - (us.max(1.0).log10() - y_lo) / (y_hi - y_lo));

    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"plot percentile-plot\" xmlns=\"http://www.w3.org/2000/svg\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">"
    );
    let _ = write!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" \
         fill=\"#fbfcfe\" stroke=\"#d5dae3\"/>"
    );

    // Vertical grid: one line per decade of 1/(1-p).
    for d in 0..=decades as u32 {
        let x = LEFT + plot_w * f64::from(d) / decades;
        let label = percentile_label(d);
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#e3e7ee\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"middle\">{label}</text>",
            TOP + plot_h,
            TOP + plot_h + 16.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"middle\">percentile</text>",
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0
    );

    // Horizontal grid: 1, 2, 5 per decade of latency (1 only when the range is wide).
    let steps: &[f64] = if y_hi - y_lo <= 3.0 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    for e in y_lo as i32..=y_hi as i32 {
        for &m in steps {
            let us = m * 10f64.powi(e);
            let y = y_of(us);
            if !(TOP - 0.5..=TOP + plot_h + 0.5).contains(&y) {
                continue;
            }
            let stroke = if m == 1.0 { "#d5dae3" } else { "#eef1f5" };
            let _ = write!(
                svg,
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{stroke}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>",
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                esc(&tick_label(us))
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"16\" y=\"{:.1}\" class=\"axis\" text-anchor=\"middle\" \
         transform=\"rotate(-90 16 {:.1})\">latency (log scale)</text>",
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );

    if let Some(budget) = budget_us {
        let y = y_of(budget);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#b45309\" \
             stroke-width=\"1.2\" stroke-dasharray=\"5 4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"budget\" text-anchor=\"end\">p99 budget {}</text>",
            LEFT + plot_w,
            LEFT + plot_w - 4.0,
            y - 5.0,
            esc(&tick_label(budget))
        );
    }

    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let mut d = String::new();
        for (i, &(q, us)) in s.points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "" } else { " " },
                x_of(q),
                y_of(us)
            );
        }
        let dash = s
            .dash
            .map(|d| format!(" stroke-dasharray=\"{d}\""))
            .unwrap_or_default();
        let _ = write!(
            svg,
            "<polyline class=\"series\" points=\"{d}\" fill=\"none\" stroke=\"{}\" \
             stroke-width=\"2\" stroke-linejoin=\"round\"{dash}><title>{}</title></polyline>",
            s.color,
            esc(&s.label)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A round axis value without trailing zeros: "20 µs", "500 µs", "5 ms", "2 s".
pub fn tick_label(us: f64) -> String {
    let (value, unit) = if us >= 1e6 {
        (us / 1e6, "s")
    } else if us >= 1e3 {
        (us / 1e3, "ms")
    } else {
        (us, "µs")
    };
    format!("{} {unit}", (value * 1000.0).round() / 1000.0)
}

/// "0%", "90%", "99%", "99.9%", ... for decade `d` of 1/(1-p).
fn percentile_label(d: u32) -> String {
    match d {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        2 => "99%".to_owned(),
        _ => format!("99.{}%", "9".repeat(d as usize - 2)),
    }
}

/// One bar of a bar chart.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub color: String,
    /// The value as shown next to the bar.
    pub text: String,
}

/// Horizontal bars, one per row, scaled to the largest value.
pub fn bar_chart(bars: &[Bar]) -> String {
    const ROW: f64 = 26.0;
    const LABEL_W: f64 = 200.0;
    const BAR_W: f64 = 420.0;
    let height = ROW * bars.len() as f64 + 8.0;
    let max = bars.iter().map(|b| b.value).fold(0.0, f64::max);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"plot bar-chart\" xmlns=\"http://www.w3.org/2000/svg\" \
         viewBox=\"0 0 {WIDTH} {height}\" role=\"img\">"
    );
    for (i, bar) in bars.iter().enumerate() {
        let y = 4.0 + ROW * i as f64;
        let w = if max > 0.0 {
            BAR_W * bar.value / max
        } else {
            0.0
        };
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"bar-label\" text-anchor=\"end\">{}</text>\
             <rect x=\"{LABEL_W}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" rx=\"3\" \
             fill=\"{}\"><title>{}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"bar-value\">{}</text>",
            LABEL_W - 8.0,
            y + ROW / 2.0 + 2.0,
            esc(&bar.label),
            ROW - 8.0,
            bar.color,
            esc(&bar.text),
            LABEL_W + w + 6.0,
            y + ROW / 2.0 + 2.0,
            esc(&bar.text)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_round_numbers_in_a_readable_unit() {
        assert_eq!(tick_label(20.0), "20 µs");
        assert_eq!(tick_label(500.0), "500 µs");
        assert_eq!(tick_label(5_000.0), "5 ms");
        assert_eq!(tick_label(2_000_000.0), "2 s");
    }

    #[test]
    fn percentile_labels_follow_the_nines() {
        let labels: Vec<String> = (0..=5).map(percentile_label).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
    }

    #[test]
    fn percentile_plot_draws_one_polyline_per_series_and_the_budget() {
        let series = vec![
            Series {
                label: "direct".into(),
                color: "#000".into(),
                dash: None,
                points: vec![(0.0, 50.0), (0.9, 80.0), (0.99, 200.0), (1.0, 900.0)],
            },
            Series {
                label: "gateway <b>".into(),
                color: "#00f".into(),
                dash: Some("4 2"),
                points: vec![(0.0, 90.0), (0.99, 400.0), (1.0, 2000.0)],
            },
        ];
        let svg = percentile_plot(&series, Some(5000.0), 3);
        assert_eq!(svg.matches("<polyline").count(), 2, "one line per series");
        assert!(
            svg.contains("p99 budget 5 ms"),
            "budget line labelled: {svg}"
        );
        assert!(svg.contains("gateway &lt;b&gt;"), "labels are escaped");
        assert!(
            svg.contains(">99.9%<"),
            "x axis reaches the 99.9th percentile"
        );
        assert!(
            !svg.contains("NaN") && !svg.contains("inf"),
            "no broken coordinates"
        );
    }

    #[test]
    fn bars_scale_to_the_largest_value() {
        let bars = [
            Bar {
                label: "a".into(),
                value: 100.0,
                color: "#111".into(),
                text: "100".into(),
            },
            Bar {
                label: "b".into(),
                value: 50.0,
                color: "#222".into(),
                text: "50".into(),
            },
        ];
        let svg = bar_chart(&bars);
        assert!(
            svg.contains("width=\"420.0\""),
            "largest bar is full width: {svg}"
        );
        assert!(
            svg.contains("width=\"210.0\""),
            "half value is half width: {svg}"
        );
    }
}

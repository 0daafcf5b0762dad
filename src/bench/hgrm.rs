//! The HdrHistogram percentile-distribution text format (`.hgrm`), which HdrHistogram's
//! own plotter (`plotFiles.html`) and most latency tooling read.
//!
//! Layout: a header row naming four columns (Value, Percentile, TotalCount,
//! 1/(1-Percentile)), a blank line, one row per percentile step (5 steps per halving of
//! the distance to 100 %), a last row at percentile 1.0 without the fourth column, then
//! three `#[...]` footer lines with mean, standard deviation, maximum, total count and
//! the histogram's bucket geometry. Values are written in milliseconds (we record
//! microseconds), as wrk2 and HdrHistogram's own examples do.

use std::io::{self, Write};

use super::histogram::{Latency, TICKS_PER_HALF_DISTANCE};

/// Our microsecond values divided by this are milliseconds.
pub const MICROS_PER_MILLI: f64 = 1000.0;

/// Writes `hist` as an `.hgrm` percentile distribution with values in milliseconds.
pub fn write(hist: &Latency, out: &mut impl Write) -> io::Result<()> {
    let h = hist.inner();
    let digits = usize::from(h.sigfig());
    let scale = MICROS_PER_MILLI;

    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total: u64 = 0;
    if !h.is_empty() {
        for step in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += step.count_since_last_iteration();
            let value = step.value_iterated_to() as f64 / scale;
            let q = step.quantile_iterated_to();
            if q < 1.0 {
                writeln!(
                    out,
                    "{value:>12.digits$} {q:2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(out, "{value:>12.digits$} {q:2.12} {total:>10}")?;
            }
        }
    }

    let (mean, stdev) = if h.is_empty() {
        (0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale)
    };
    let max = h.max() as f64 / scale;
    writeln!(
        out,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stdev:>12.digits$}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets(h.sigfig())
    )
}

/// Sub-buckets per bucket: the smallest power of two that holds 2 × 10^sigfig values,
/// which is how HdrHistogram sizes them for a lowest value of 1.
fn sub_buckets(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(h: &Latency) -> String {
        let mut out = Vec::new();
        write(h, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hgrm_has_the_header_rows_and_footer_plotters_expect() {
        let mut h = Latency::new();
        for us in 1..=10_000 {
            h.record_us(us);
        }
        let text = render(&h);
        let lines: Vec<&str> = text.lines().collect();

        assert_eq!(
            lines[0], "       Value     Percentile TotalCount 1/(1-Percentile)",
            "header row"
        );
        assert_eq!(lines[1], "", "blank line after the header");

        let rows: Vec<Vec<&str>> = lines[2..]
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(rows.len() > 30, "only {} percentile rows", rows.len());
        let (last, body) = rows.split_last().unwrap();
        for row in body {
            assert_eq!(row.len(), 4, "a middle row has four columns: {row:?}");
            let p: f64 = row[1].parse().unwrap();
            let inverse: f64 = row[3].parse().unwrap();
            assert!(
                (inverse - 1.0 / (1.0 - p)).abs() / inverse < 0.01,
                "1/(1-p) column wrong in {row:?}"
            );
        }
        assert_eq!(
            last.len(),
            3,
            "the last row has no 1/(1-p) column: {last:?}"
        );
        assert_eq!(last[1], "1.000000000000", "last row is percentile 1.0");
        assert_eq!(last[2], "10000", "last row's total count is every value");
        assert_eq!(body[0][1], "0.000000000000", "first row is percentile 0");
        assert!(
            body[0][1].len() == 14 && body[0][0].ends_with(".001"),
            "values are milliseconds with 3 decimals: {:?}",
            body[0]
        );
        let max: f64 = last[0].parse().unwrap();
        assert!((max - 10.0).abs() < 0.01, "max is 10 ms, got {max}");

        let footer: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with("#["))
            .copied()
            .collect();
        assert_eq!(footer.len(), 3, "three footer lines: {footer:?}");
        assert!(
            footer[0].starts_with("#[Mean    =") && footer[0].contains("StdDeviation   ="),
            "mean line: {}",
            footer[0]
        );
        assert!(
            footer[1].contains("Total count    =        10000]"),
            "{}",
            footer[1]
        );
        assert!(
            footer[2].contains("SubBuckets     =         2048]"),
            "{}",
            footer[2]
        );
    }

    #[test]
    fn total_count_column_never_decreases() {
        let mut h = Latency::new();
        for us in [5, 5, 7, 100, 2_000, 2_000, 90_000] {
            h.record_us(us);
        }
        let text = render(&h);
        let mut previous = 0u64;
        for line in text.lines().skip(2).take_while(|l| !l.starts_with('#')) {
            let count: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert!(count >= previous, "count went down at {line:?}");
            previous = count;
        }
        assert_eq!(previous, 7, "the final row counts all 7 values");
    }

    #[test]
    fn an_empty_histogram_still_writes_header_and_footer() {
        let text = render(&Latency::new());
        assert!(text.starts_with("       Value"), "header missing: {text}");
        assert!(
            text.contains("Total count    =            0]"),
            "footer: {text}"
        );
    }
}

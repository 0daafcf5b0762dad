//! Latency histograms: HDR histograms in microseconds with 3 significant digits, the
//! summary a table prints, the percentile curve a report plots, and the compact encoding
//! that carries a whole histogram inside the JSON results.
//!
//! The encoding is HdrHistogram's own: the V2 format, zlib-compressed, in base64 — what
//! HdrHistogram interval logs carry, so other HdrHistogram tools can decode it too. Text
//! output in the `.hgrm` format is in `hgrm`.

use std::time::Duration;

use anyhow::{Context, anyhow};
use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

/// The smallest value told apart from its neighbours: one microsecond.
pub const LOWEST_US: u64 = 1;
/// The largest value recorded as itself: one hour. Longer ones saturate here.
pub const HIGHEST_US: u64 = 3_600_000_000;
/// Value precision: 3 significant digits, i.e. within 0.1 % of the true value.
pub const SIGFIG: u8 = 3;

/// The percentiles every table and summary shows, with their column names.
pub const TABLE_PERCENTILES: [(f64, &str); 5] = [
    (50.0, "p50"),
    (90.0, "p90"),
    (99.0, "p99"),
    (99.9, "p99.9"),
    (99.99, "p99.99"),
];

/// How finely `curve` walks the percentiles: 5 steps per halving of the distance to
/// 100 %, the HdrHistogram default for percentile distributions.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

/// What a table row shows about one histogram; all values in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Latency {
    pub fn new() -> Latency {
        // The bounds are constants that `new_with_bounds` accepts (low >= 1, high >= 2 *
        // low, sigfig <= 5); the unit test `new_histogram_has_the_documented_bounds`
        // covers this call, so it cannot fail at run time.
        let inner = Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG)
            .expect("constant histogram bounds are valid");
        Latency(inner)
    }

    /// Records a duration, rounded to the nearest microsecond; beyond an hour it is
    /// recorded as an hour.
    pub fn record(&mut self, d: Duration) {
        let micros = (d.as_nanos() + 500) / 1000;
        self.record_us(u64::try_from(micros).unwrap_or(u64::MAX));
    }

    pub fn record_us(&mut self, micros: u64) {
        self.0.saturating_record(micros.min(HIGHEST_US));
    }

    /// Adds every value of `other` to this histogram.
    pub fn merge(&mut self, other: &Latency) {
        // Both sides have the same bounds (every `Latency` is made by `new` or `decode`,
        // which checks them), so addition cannot run out of range.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value at percentile `p` (0 to 100), in microseconds.
    pub fn percentile(&self, p: f64) -> u64 {
        self.0.value_at_percentile(p)
    }

    pub fn summary(&self) -> Summary {
        let at = |p| self.0.value_at_percentile(p);
        Summary {
            count: self.0.len(),
            mean: if self.0.is_empty() {
                0.0
            } else {
                self.0.mean()
            },
            min: self.0.min(),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            p999: at(99.9),
            p9999: at(99.99),
            max: self.0.max(),
        }
    }

    /// The percentile distribution as (quantile, microseconds) points, from the lowest
    /// value to the maximum at quantile 1.0: what latency-by-percentile plots draw.
    pub fn curve(&self) -> Vec<(f64, u64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        self.0
            .iter_quantiles(TICKS_PER_HALF_DISTANCE)
            .map(|v| (v.quantile_iterated_to(), v.value_iterated_to()))
            .collect()
    }

    /// The underlying HdrHistogram, for writers of other formats.
    pub fn inner(&self) -> &Histogram<u64> {
        &self.0
    }

    /// Base64 of the compressed V2 serialization.
    pub fn encode(&self) -> anyhow::Result<String> {
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&self.0, &mut bytes)
            .map_err(|err| anyhow!("encoding a histogram: {err:?}"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// The inverse of `encode`. Refuses histograms with other bounds or precision than
    /// ours, so that merging and comparing stay meaningful.
    pub fn decode(text: &str) -> anyhow::Result<Latency> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .context("histogram is not valid base64")?;
        let hist: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|err| anyhow!("histogram is not in HdrHistogram V2 format: {err:?}"))?;
        if hist.sigfig() != SIGFIG || hist.low() != LOWEST_US {
            return Err(anyhow!(
                "histogram has {} significant digits and lowest value {}; expected {SIGFIG} and \
                 {LOWEST_US} (microseconds)",
                hist.sigfig(),
                hist.low()
            ));
        }
        let mut ours = Latency::new();
        ours.0
            .add(&hist)
            .map_err(|err| anyhow!("histogram does not fit our bounds: {err:?}"))?;
        Ok(ours)
    }
}

impl Default for Latency {
    fn default() -> Latency {
        Latency::new()
    }
}

/// A microsecond value the way a person reads it: "87 µs", "1.25 ms", "3.10 s".
pub fn format_us(micros: f64) -> String {
    if micros < 1_000.0 {
        format!("{micros:.0} µs")
    } else if micros < 10_000.0 {
        format!("{:.2} ms", micros / 1_000.0)
    } else if micros < 1_000_000.0 {
        format!("{:.1} ms", micros / 1_000.0)
    } else {
        format!("{:.2} s", micros / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform_1_to_1000() -> Latency {
        let mut h = Latency::new();
        for us in 1..=1000 {
            h.record_us(us);
        }
        h
    }

    #[test]
    fn new_histogram_has_the_documented_bounds() {
        let h = Latency::new();
        assert_eq!(h.inner().low(), LOWEST_US, "lowest discernible value");
        assert!(h.inner().high() >= HIGHEST_US, "highest trackable value");
        assert_eq!(h.inner().sigfig(), 3, "significant digits");
    }

    #[test]
    fn summary_of_a_uniform_distribution_has_the_expected_percentiles() {
        let s = uniform_1_to_1000().summary();
        assert_eq!(s.count, 1000, "every recorded value should be counted");
        assert_eq!(s.min, 1, "smallest value");
        assert_eq!(s.max, 1000, "largest value");
        assert!(
            (s.mean - 500.5).abs() < 0.6,
            "mean {} should be near 500.5",
            s.mean
        );
        assert_eq!(s.p50, 500, "median of 1..=1000");
        assert_eq!(s.p90, 900, "p90 of 1..=1000");
        assert_eq!(s.p99, 990, "p99 of 1..=1000");
        assert!(
            (999..=1000).contains(&s.p999),
            "p99.9 of 1..=1000 is 999 or 1000 depending on rounding, got {}",
            s.p999
        );
        assert_eq!(s.p9999, 1000, "p99.99 of 1..=1000 is the maximum");
    }

    #[test]
    fn durations_are_rounded_to_the_nearest_microsecond_and_saturate_at_an_hour() {
        let mut h = Latency::new();
        h.record(Duration::from_nanos(1_499));
        h.record(Duration::from_nanos(1_500));
        h.record(Duration::from_secs(10_000));
        assert_eq!(h.count(), 3, "all three values recorded");
        assert_eq!(h.inner().min(), 1, "1.499 µs rounds down to 1");
        assert_eq!(h.inner().count_at(2), 1, "1.5 µs rounds up to 2");
        assert!(
            h.inner().equivalent(h.inner().max(), HIGHEST_US),
            "a value past the bound is recorded at the bound, got {}",
            h.inner().max()
        );
    }

    #[test]
    fn values_keep_three_significant_digits() {
        let mut h = Latency::new();
        h.record_us(123_456);
        let got = h.percentile(100.0);
        let error = (got as f64 - 123_456.0).abs() / 123_456.0;
        assert!(
            error <= 0.001,
            "123456 µs read back as {got}: {error:.5} off"
        );
    }

    #[test]
    fn merging_adds_counts_of_both_histograms() {
        let mut a = uniform_1_to_1000();
        let mut b = Latency::new();
        b.record_us(5_000);
        a.merge(&b);
        assert_eq!(a.count(), 1001, "merged count");
        assert!(
            a.inner().equivalent(a.summary().max, 5000),
            "merged maximum comes from the second histogram, got {}",
            a.summary().max
        );
    }

    #[test]
    fn encoding_round_trips_every_count() {
        let h = uniform_1_to_1000();
        let text = h.encode().unwrap();
        let back = Latency::decode(&text).unwrap();
        assert_eq!(back.summary(), h.summary(), "decoded histogram differs");
        assert_eq!(back.inner(), h.inner(), "decoded counts differ");
    }

    #[test]
    fn decoding_garbage_is_an_error_not_a_panic() {
        let err = Latency::decode("not base64 !!").unwrap_err();
        assert!(err.to_string().contains("base64"), "got: {err}");
        let err = Latency::decode("AAAA").unwrap_err();
        assert!(err.to_string().contains("V2"), "got: {err}");
    }

    #[test]
    fn curve_rises_monotonically_and_ends_at_the_maximum() {
        let points = uniform_1_to_1000().curve();
        assert!(points.len() > 20, "only {} points", points.len());
        for pair in points.windows(2) {
            assert!(pair[0].0 <= pair[1].0, "quantiles go down at {pair:?}");
            assert!(pair[0].1 <= pair[1].1, "values go down at {pair:?}");
        }
        assert_eq!(points.last().copied(), Some((1.0, 1000)), "last point");
    }

    #[test]
    fn format_us_picks_a_readable_unit() {
        assert_eq!(format_us(87.0), "87 µs");
        assert_eq!(format_us(1_250.0), "1.25 ms");
        assert_eq!(format_us(25_000.0), "25.0 ms");
        assert_eq!(format_us(3_100_000.0), "3.10 s");
    }
}

//! Latency histograms (HDR, microseconds) and their percentile summary.

use hdrhistogram::Histogram;

/// An empty latency histogram: microseconds, 3 significant figures, growing
/// to whatever range is recorded.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is a valid histogram precision")
}

/// Records one latency. `record` grows the histogram as needed;
/// `saturating_record` would clamp to the current range instead.
pub(crate) fn record_latency(h: &mut Histogram<u64>, us: u64) {
    if h.record(us).is_err() {
        h.saturating_record(us);
    }
}

/// Latency percentiles, in milliseconds (`count` samples).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

pub(crate) fn summarize(h: &Histogram<u64>) -> LatencySummary {
    let ms = |us: u64| us as f64 / 1e3;
    if h.is_empty() {
        return LatencySummary {
            count: 0,
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            p999: 0.0,
            max: 0.0,
        };
    }
    LatencySummary {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_of_small_sets() {
        let empty = summarize(&new_histogram());
        assert_eq!(empty.count, 0);
        assert_eq!(empty.max, 0.0);

        // 1..=1000 µs, split over two member histograms and merged.
        let mut a = new_histogram();
        let mut b = new_histogram();
        for us in 1..=1000u64 {
            if us % 2 == 0 {
                record_latency(&mut a, us);
            } else {
                record_latency(&mut b, us);
            }
        }
        let mut all = new_histogram();
        all.add(&a).expect("merge");
        all.add(&b).expect("merge");
        let s = summarize(&all);
        assert_eq!(s.count, 1000);
        // Below 2048 µs, 3 significant figures record exact values.
        assert_eq!(s.p50, 0.5);
        assert_eq!(s.p90, 0.9);
        assert_eq!(s.p99, 0.99);
        assert_eq!(s.p999, 0.999);
        assert_eq!(s.max, 1.0);

        // Large values keep 3 significant figures.
        let mut h = new_histogram();
        record_latency(&mut h, 250_000);
        let mut merged = new_histogram();
        merged.add(&h).expect("merge");
        record_latency(&mut merged, 1);
        let s = summarize(&merged);
        assert!((s.max - 250.0).abs() <= 0.25, "{s:?}");
        assert_eq!(s.p50, 0.001);
        assert_eq!(s.p90, s.max);
    }
}

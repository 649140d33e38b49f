//! A lease's throughput, as the Java KCL 3.x writes it into `throughputKBps` on each renewal
//! (`LeaseStatsRecorder`, `DynamoDBLeaseRenewer`): the bytes of the user records delivered to
//! the processor (after deaggregation) during the last renewal interval, in KiB per second,
//! smoothed by an exponential moving average (weight 0.5 on the newest interval), rounded to
//! 6 decimals. Nothing is written before the first delivery, unless the lease came with a
//! value: a lease that changes hands keeps its weight in the leader's balancing instead of
//! starting at nothing. (The KCL seeds its recorder with the old value as bytes, which its
//! next computation divides by the interval; here the average starts from the old value
//! itself.) Pure: the caller passes the time.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Weight of the newest interval (`LeaseStatsRecorder.DEFAULT_ALPHA`).
pub const ALPHA: f64 = 0.5;
const BYTES_PER_KB: f64 = 1024.0;

/// Bytes delivered on one lease, and the average so far.
#[derive(Debug, Clone, Default)]
pub struct ThroughputRecorder {
    deliveries: VecDeque<(Instant, u64)>,
    average: Option<f64>,
}

impl ThroughputRecorder {
    /// `seed`: the lease's `throughputKBps` when it was taken.
    pub fn new(seed: Option<f64>) -> Self {
        Self {
            deliveries: VecDeque::new(),
            average: seed.filter(|v| v.is_finite() && *v >= 0.0),
        }
    }

    /// `bytes` were delivered to the processor at `at`.
    pub fn record(&mut self, bytes: u64, at: Instant) {
        self.deliveries.push_back((at, bytes));
        if self.average.is_none() {
            // Counted from the first delivery on, as the KCL does.
            self.average = Some(f64::NAN);
        }
    }

    /// What a renewal at `now` writes, `interval` after the previous one: the average updated
    /// with the rate of the deliveries within the last `interval`. `None` before anything was
    /// delivered (and without a seed).
    pub fn renewal_kbps(&mut self, now: Instant, interval: Duration) -> Option<f64> {
        let previous = self.average?;
        while let Some((at, _)) = self.deliveries.front() {
            if now.saturating_duration_since(*at) < interval {
                break;
            }
            self.deliveries.pop_front();
        }
        let bytes: u64 = self
            .deliveries
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, b)| *b)
            .sum();
        let secs = interval.as_secs_f64().max(1e-3);
        let rate = bytes as f64 / BYTES_PER_KB / secs;
        let average = if previous.is_nan() {
            rate
        } else {
            ALPHA * rate + (1.0 - ALPHA) * previous
        };
        self.average = Some(average);
        Some(round6(average))
    }
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(2);

    #[test]
    fn nothing_is_written_before_the_first_delivery() {
        let t0 = Instant::now();
        let mut r = ThroughputRecorder::new(None);
        assert_eq!(r.renewal_kbps(t0, INTERVAL), None);
        assert_eq!(r.renewal_kbps(t0 + INTERVAL, INTERVAL), None);
    }

    #[test]
    fn the_rate_of_the_last_interval_is_averaged_with_the_previous_value() {
        let t0 = Instant::now();
        let mut r = ThroughputRecorder::new(None);
        // 4 KiB within the first interval: 2 KiB/s.
        r.record(2048, t0);
        r.record(2048, t0 + Duration::from_millis(500));
        assert_eq!(
            r.renewal_kbps(t0 + Duration::from_secs(1), INTERVAL),
            Some(2.0)
        );
        // Nothing new, and the old deliveries fall out of the window: 0.5 * 0 + 0.5 * 2.
        assert_eq!(
            r.renewal_kbps(t0 + Duration::from_secs(3), INTERVAL),
            Some(1.0)
        );
        assert_eq!(
            r.renewal_kbps(t0 + Duration::from_secs(5), INTERVAL),
            Some(0.5)
        );
        // 8 KiB: 4 KiB/s -> 0.5 * 4 + 0.5 * 0.5.
        r.record(8192, t0 + Duration::from_secs(6));
        assert_eq!(
            r.renewal_kbps(t0 + Duration::from_secs(7), INTERVAL),
            Some(2.25)
        );
    }

    #[test]
    fn a_lease_taken_with_a_value_starts_from_it() {
        let t0 = Instant::now();
        let mut r = ThroughputRecorder::new(Some(10.0));
        assert_eq!(r.renewal_kbps(t0, INTERVAL), Some(5.0));
        let mut bad = ThroughputRecorder::new(Some(f64::NAN));
        assert_eq!(bad.renewal_kbps(t0, INTERVAL), None);
    }

    #[test]
    fn values_are_rounded_to_six_decimals() {
        let t0 = Instant::now();
        let mut r = ThroughputRecorder::new(None);
        r.record(1, t0);
        assert_eq!(r.renewal_kbps(t0, Duration::from_secs(3)), Some(0.000326));
    }
}

//! Medians, ranges and percentiles of measurements.

use serde::{Deserialize, Serialize};

/// The median and range of several rounds of one measurement.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// None for no samples.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples; None when empty.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = samples.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// The ratio of two medians, if both exist and the divisor is not zero.
pub fn ratio(a: Option<Summary>, b: Option<Summary>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median != 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

/// The median (and range) of the round-by-round ratios `a[i] / b[i]` of two series measured in
/// the same rounds: what drifts between rounds (another tenant's load) cancels within a pair.
/// None unless both have one sample per round (a failed run left out misaligns them).
pub fn paired_ratio(a: &[f64], b: &[f64]) -> Option<Summary> {
    if a.len() != b.len() {
        return None;
    }
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, b)| **b != 0.0)
        .map(|(a, b)| a / b)
        .collect();
    Summary::of(&r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Summary::of(&[1.0, 2.0, 3.0, 4.0]).unwrap().median, 2.5);
        assert!(Summary::of(&[]).is_none());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }

    #[test]
    fn paired_ratios() {
        // Round 2 ran on a loaded machine: both halves fell, their ratio did not.
        let r = paired_ratio(&[10.0, 5.0, 9.0], &[10.0, 5.0, 10.0]).unwrap();
        assert_eq!((r.median, r.min, r.max), (1.0, 0.9, 1.0));
        assert!(paired_ratio(&[1.0], &[1.0, 2.0]).is_none());
    }
}

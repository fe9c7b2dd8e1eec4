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
    Summary::of(&pair_ratios(a, b)?)
}

/// The ratios `a[i] / b[i]` of two series measured in the same rounds, a zero divisor's pair
/// left out; None when the series are not aligned.
fn pair_ratios(a: &[f64], b: &[f64]) -> Option<Vec<f64>> {
    (a.len() == b.len()).then(|| {
        a.iter()
            .zip(b)
            .filter(|(_, b)| **b != 0.0)
            .map(|(a, b)| a / b)
            .collect()
    })
}

/// The median of some samples with a distribution-free confidence interval: the order statistics
/// `x(k)` and `x(n+1-k)` of the sorted samples, with the largest `k` for which the interval covers
/// the true median with probability at least the confidence asked (the number of samples below
/// the median is Binomial(n, 1/2), whatever the samples' distribution, for independent samples).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MedianCi {
    pub median: f64,
    pub lo: f64,
    pub hi: f64,
    /// The interval's exact coverage, `1 - 2 P(B <= k-1)`, B ~ Binomial(n, 1/2): at least the
    /// confidence asked, or the widest interval's (the range's) when too few samples reach it.
    pub coverage: f64,
    pub n: usize,
}

impl MedianCi {
    /// None for no (finite) samples. With fewer than 6 samples even the range covers the median
    /// with less than 95 %: the range is given with its coverage.
    pub fn of(samples: &[f64], confidence: f64) -> Option<MedianCi> {
        let s = Summary::of(samples)?;
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        // cdf[j] = P(B <= j).
        let mut cdf = Vec::with_capacity(n + 1);
        let (mut term, mut sum) = (0.5f64.powi(n as i32), 0.0);
        for j in 0..=n {
            sum += term;
            cdf.push(sum);
            term = term * (n - j) as f64 / (j + 1) as f64;
        }
        let alpha = (1.0 - confidence) / 2.0;
        // The largest k (1-based, k <= (n+1)/2) with P(B <= k-1) <= alpha, else 1.
        let k = (1..=n.div_ceil(2))
            .take_while(|&k| cdf[k - 1] <= alpha + 1e-12)
            .last()
            .unwrap_or(1);
        Some(MedianCi {
            median: s.median,
            lo: v[k - 1],
            hi: v[n - k],
            coverage: (1.0 - 2.0 * cdf[k - 1]).max(0.0),
            n,
        })
    }
}

/// [`MedianCi`] of the pair-by-pair ratios `a[i] / b[i]` of two series measured in pairs (a
/// pair's two runs back to back): what drifts between pairs cancels within one. Pairs with a
/// missing half (NaN, a zero divisor) are left out; None when the series are not aligned.
pub fn paired_ratio_ci(a: &[f64], b: &[f64], confidence: f64) -> Option<MedianCi> {
    MedianCi::of(&pair_ratios(a, b)?, confidence)
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

    #[test]
    fn median_intervals_by_order_statistics() {
        // n = 16: P(B <= 3) = (1 + 16 + 120 + 560) / 2^16 = 697/65536 = 0.0106 <= 0.025 and
        // P(B <= 4) = 2517/65536 = 0.0384 > 0.025: k = 4, the 4th and 13th values, coverage
        // 1 - 2 * 697/65536 = 0.97873.
        let v: Vec<f64> = (1..=16).rev().map(f64::from).collect();
        let ci = MedianCi::of(&v, 0.95).unwrap();
        assert_eq!((ci.median, ci.lo, ci.hi, ci.n), (8.5, 4.0, 13.0, 16));
        assert!((ci.coverage - (1.0 - 2.0 * 697.0 / 65536.0)).abs() < 1e-12);
        // n = 20: P(B <= 5) = 21700/2^20 = 0.0207, P(B <= 6) = 60460/2^20 = 0.0577: k = 6.
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let ci = MedianCi::of(&v, 0.95).unwrap();
        assert_eq!((ci.median, ci.lo, ci.hi), (10.5, 6.0, 15.0));
        assert!((ci.coverage - (1.0 - 2.0 * 21700.0 / 1048576.0)).abs() < 1e-12);
        // n = 9: P(B <= 1) = 10/512 = 0.0195, P(B <= 2) = 46/512 = 0.0898: k = 2.
        let ci = MedianCi::of(&[9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0], 0.95).unwrap();
        assert_eq!((ci.median, ci.lo, ci.hi), (5.0, 2.0, 8.0));
        assert!((ci.coverage - (1.0 - 20.0 / 512.0)).abs() < 1e-12);
        // n = 8: P(B <= 1) = 9/256 = 0.035 > 0.025: the range, coverage 1 - 2/256.
        let ci = MedianCi::of(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 0.95).unwrap();
        assert_eq!((ci.lo, ci.hi), (1.0, 8.0));
        assert!((ci.coverage - (1.0 - 2.0 / 256.0)).abs() < 1e-12);
        // n = 5: even the range covers only 1 - 2/32 = 0.9375, said as such.
        let ci = MedianCi::of(&[5.0, 4.0, 3.0, 2.0, 1.0], 0.95).unwrap();
        assert_eq!((ci.median, ci.lo, ci.hi), (3.0, 1.0, 5.0));
        assert!((ci.coverage - 0.9375).abs() < 1e-12);
        // One sample: itself, no coverage to speak of; none: nothing; NaN is left out.
        let ci = MedianCi::of(&[2.0], 0.95).unwrap();
        assert_eq!((ci.median, ci.lo, ci.hi, ci.coverage), (2.0, 2.0, 2.0, 0.0));
        assert!(MedianCi::of(&[], 0.95).is_none());
        assert_eq!(MedianCi::of(&[f64::NAN, 1.0], 0.95).unwrap().n, 1);
    }

    #[test]
    fn paired_ratio_intervals() {
        // Six pairs; pair 3 ran slowed (both halves at half speed), pair 5 lost its ferry half
        // (NaN). Ratios 0.95, 0.97, 0.96, 0.99, 0.94 -> median 0.96; n = 5, so the range
        // (0.94..0.99) with coverage 1 - 2/32.
        let ferry = [95.0, 97.0, 48.0, 99.0, f64::NAN, 94.0];
        let direct = [100.0, 100.0, 50.0, 100.0, 100.0, 100.0];
        let ci = paired_ratio_ci(&ferry, &direct, 0.95).unwrap();
        assert!((ci.median - 0.96).abs() < 1e-12, "{ci:?}");
        assert_eq!((ci.lo, ci.hi, ci.n), (0.94, 0.99, 5));
        assert!((ci.coverage - 0.9375).abs() < 1e-12);
        assert!(paired_ratio_ci(&[1.0], &[1.0, 2.0], 0.95).is_none());
    }
}

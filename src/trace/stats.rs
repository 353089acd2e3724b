//! Summary statistics of a trace: what a user wants to know before planning on it.

use serde::{Deserialize, Serialize};

/// Length thresholds (tokens) above which `inspect` reports the share of all tokens.
pub const SHARE_THRESHOLDS: [u32; 3] = [8 * 1024, 32 * 1024, 128 * 1024];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceStats {
    pub count: usize,
    pub total_tokens: u64,
    pub min: u32,
    /// Quantiles by crate::stats's convention (interpolated between order statistics), rounded
    /// to the nearest token.
    pub median: u32,
    pub mean: f64,
    pub p90: u32,
    pub p99: u32,
    pub max: u32,
    /// Fraction of all tokens in documents longer than each threshold of [`SHARE_THRESHOLDS`].
    pub token_share_above: Vec<TokenShare>,
    /// The `--max-seq` the counts below refer to, if one was given.
    pub max_seq: Option<u32>,
    /// Documents longer than `max_seq`, and the tokens they hold.
    pub over_max_seq: usize,
    pub over_max_seq_tokens: u64,
    pub histogram: Histogram,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenShare {
    /// Length in tokens.
    pub above: u32,
    /// Fraction of all tokens in documents longer than `above`.
    pub share: f64,
}

/// Document counts in power-of-two length buckets: bucket k holds lengths in [2^k, 2^(k+1)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub buckets: Vec<HistogramBucket>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramBucket {
    pub lo: u64,
    pub hi: u64,
    pub count: usize,
    pub tokens: u64,
    /// Of these, documents longer than `max_seq` and their tokens (absent when none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub over_max_seq: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub over_max_seq_tokens: u64,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl TraceStats {
    /// Statistics of a non-empty list of positive lengths.
    pub fn of(lengths: &[u32], max_seq: Option<u32>) -> TraceStats {
        assert!(!lengths.is_empty(), "a Trace is never empty");
        let mut sorted = lengths.to_vec();
        sorted.sort_unstable();
        let total_tokens: u64 = sorted.iter().map(|&l| u64::from(l)).sum();
        let quantile = |q| crate::stats::quantile_sorted(&sorted, q).map_or(0, |v| v.round() as u32);
        let tokens_above = |t: u32| -> u64 {
            let from = sorted.partition_point(|&l| l <= t);
            sorted[from..].iter().map(|&l| u64::from(l)).sum()
        };
        let token_share_above = SHARE_THRESHOLDS
            .iter()
            .map(|&t| TokenShare {
                above: t,
                share: tokens_above(t) as f64 / total_tokens as f64,
            })
            .collect();
        let (over_max_seq, over_max_seq_tokens) = match max_seq {
            Some(m) => (sorted.len() - sorted.partition_point(|&l| l <= m), tokens_above(m)),
            None => (0, 0),
        };
        TraceStats {
            count: sorted.len(),
            total_tokens,
            min: sorted[0],
            median: quantile(0.5),
            mean: total_tokens as f64 / sorted.len() as f64,
            p90: quantile(0.9),
            p99: quantile(0.99),
            max: sorted[sorted.len() - 1],
            token_share_above,
            max_seq,
            over_max_seq,
            over_max_seq_tokens,
            histogram: Histogram::of(&sorted, max_seq),
        }
    }
}

impl Histogram {
    fn of(sorted: &[u32], max_seq: Option<u32>) -> Histogram {
        let bucket = |l: u32| 31 - l.leading_zeros() as usize;
        let lo = bucket(sorted[0]);
        let hi = bucket(sorted[sorted.len() - 1]);
        let mut buckets: Vec<HistogramBucket> = (lo..=hi)
            .map(|k| HistogramBucket {
                lo: 1 << k,
                hi: 1 << (k + 1),
                count: 0,
                tokens: 0,
                over_max_seq: 0,
                over_max_seq_tokens: 0,
            })
            .collect();
        for &l in sorted {
            let b = &mut buckets[bucket(l) - lo];
            b.count += 1;
            b.tokens += u64::from(l);
            if max_seq.is_some_and(|m| l > m) {
                b.over_max_seq += 1;
                b.over_max_seq_tokens += u64::from(l);
            }
        }
        Histogram { buckets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_interpolated_then_rounded() {
        let v: Vec<u32> = (1..=10).collect();
        let s = TraceStats::of(&v, None);
        // Positions q (n - 1): 4.5 -> 5.5, 8.1 -> 9.1, 8.91 -> 9.91.
        assert_eq!((s.median, s.p90, s.p99), (6, 9, 10));
    }

    #[test]
    fn stats_of_a_small_trace() {
        let s = TraceStats::of(&[100, 9000, 1, 40000, 3], Some(8192));
        assert_eq!(s.count, 5);
        assert_eq!(s.total_tokens, 49104);
        assert_eq!((s.min, s.median, s.max), (1, 100, 40000));
        assert_eq!(s.over_max_seq, 2);
        assert_eq!(s.over_max_seq_tokens, 49000);
        // 49000 of 49104 tokens sit in documents over 8K, 40000 over 32K, none over 128K.
        assert!((s.token_share_above[0].share - 49000.0 / 49104.0).abs() < 1e-12);
        assert!((s.token_share_above[1].share - 40000.0 / 49104.0).abs() < 1e-12);
        assert_eq!(s.token_share_above[2].share, 0.0);
        let counts: Vec<usize> = s.histogram.buckets.iter().map(|b| b.count).collect();
        // buckets from [1,2) to [32768,65536): 1 | 3 | 100 | 9000 | 40000
        assert_eq!(counts.len(), 16);
        assert_eq!(counts.iter().sum::<usize>(), 5);
        assert_eq!(s.histogram.buckets[0].count, 1);
        assert_eq!(s.histogram.buckets[1].count, 1); // 3 in [2,4)
        assert_eq!(s.histogram.buckets[15].count, 1); // 40000 in [32768, 65536)
        // Over the 8192 max: 9000 in [8192, 16384), 40000 in [32768, 65536).
        let over: Vec<(usize, u64)> = s.histogram.buckets.iter().map(|b| (b.over_max_seq, b.over_max_seq_tokens)).collect();
        assert_eq!((over[13], over[14], over[15]), ((1, 9000), (0, 0), (1, 40000)));
        assert_eq!(over.iter().map(|o| o.0).sum::<usize>(), s.over_max_seq);
    }
}

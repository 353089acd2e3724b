//! How quantities are written for people: one formatter per unit, so every command, table and
//! figure writes the same quantity the same way. Two forms:
//!
//! - **Adaptive** ([`seconds`], [`bytes`], [`bytes_decimal`]): the prefix that keeps the number
//!   small, at most three significant digits ([`significant`]), no trailing zeros. For prose,
//!   messages and axis ticks. Sizes are binary (KiB, MiB, GiB: NCCL and nccl-tests size
//!   messages in powers of two); [`bytes_decimal`] is for log axes, whose ticks fall on powers of
//!   ten.
//! - **One unit per column** ([`ms`], [`gib`]): a fixed unit and fixed decimals, so the rows of a
//!   table line up and compare at a glance.
//!
//! Fractions are written as percentages with one decimal ([`percent`], [`signed_percent`]); token
//! lengths with binary K and M ([`token_length`], as 128K context is quoted), other counts with
//! decimal K, M and B ([`count`]).

/// Bytes in a GiB (2^30).
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// An integer with thousands separators (1000000 -> "1,000,000").
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A number with at most three significant digits (all of its integer digits when it has more)
/// and no trailing zeros: 0.30000000000000004 -> "0.3", 1234 -> "1234".
pub fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { v.to_string() };
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Seconds with an SI prefix: 2.5e-5 -> "25 µs", 0.14 -> "140 ms".
pub fn seconds(s: f64) -> String {
    let (scale, unit) = match s.abs() {
        a if a >= 1.0 || a == 0.0 => (1.0, "s"),
        a if a >= 1e-3 => (1e3, "ms"),
        a if a >= 1e-6 => (1e6, "µs"),
        _ => (1e9, "ns"),
    };
    format!("{} {unit}", significant(s * scale))
}

/// A duration as people read a clock: "4.2 s", "3 min 05 s", "2 h 03 min".
pub fn clock(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let whole = s.round() as u64;
    if whole < 3600 {
        return format!("{} min {:02} s", whole / 60, whole % 60);
    }
    format!("{} h {:02} min", whole / 3600, (whole % 3600) / 60)
}

/// Seconds as milliseconds with three decimals, for a column of times: 0.0123456 -> "12.346 ms".
pub fn ms(s: f64) -> String {
    format!("{:.3} ms", s * 1e3)
}

/// Bytes with a binary prefix and up to three decimals: 524288 -> "512 KiB", 1.5e9 -> "1.397 GiB".
pub fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {}", UNITS[unit])
}

/// Bytes with a decimal SI prefix, for log axes whose ticks fall on powers of ten: 1e6 -> "1 MB".
pub fn bytes_decimal(b: f64) -> String {
    let (scale, unit) = match b.abs() {
        a if a >= 1e9 => (1e-9, "GB"),
        a if a >= 1e6 => (1e-6, "MB"),
        a if a >= 1e3 => (1e-3, "kB"),
        _ => (1.0, "B"),
    };
    format!("{} {unit}", significant(b * scale))
}

/// A token length with a binary prefix, as sequence lengths are quoted: 512, 2K, 128K, 1M.
pub fn token_length(v: f64) -> String {
    match v {
        v if v >= 1024.0 * 1024.0 => format!("{}M", significant(v / (1024.0 * 1024.0))),
        v if v >= 1024.0 => format!("{}K", significant(v / 1024.0)),
        v => significant(v),
    }
}

/// A count with a K/M/B suffix: 77932 -> "77.9K".
pub fn count(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{}B", significant(v / 1e9)),
        v if v >= 1e6 => format!("{}M", significant(v / 1e6)),
        v if v >= 1e3 => format!("{}K", significant(v / 1e3)),
        v => significant(v),
    }
}

/// Bytes in GiB with two decimals, for a column of memory sizes: "21.74 GiB".
pub fn gib(b: f64) -> String {
    format!("{:.2} GiB", b / GIB)
}

/// A fraction as a percentage with one decimal: 0.1234 -> "12.3%".
pub fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// A fraction as a signed percentage with one decimal: 0.25 -> "+25.0%", -0.031 -> "-3.1%".
pub fn signed_percent(fraction: f64) -> String {
    format!("{:+.1}%", fraction * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_like_a_clock() {
        use std::time::Duration;
        assert_eq!(clock(Duration::from_millis(4200)), "4.2 s");
        assert_eq!(clock(Duration::from_secs(185)), "3 min 05 s");
        assert_eq!(clock(Duration::from_secs(7380)), "2 h 03 min");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn significant_digits() {
        assert_eq!(significant(0.0), "0");
        assert_eq!(significant(1.25), "1.25");
        assert_eq!(significant(0.30000000000000004), "0.3");
        assert_eq!(significant(40.0), "40");
        assert_eq!(significant(1234.0), "1234");
        assert_eq!(significant(-0.01234), "-0.0123");
    }

    #[test]
    fn times() {
        assert_eq!(seconds(2.5e-5), "25 µs");
        assert_eq!(seconds(0.14), "140 ms");
        assert_eq!(seconds(3.0), "3 s");
        assert_eq!(seconds(0.0), "0 s");
        assert_eq!(seconds(4.2e-10), "0.42 ns");
        assert_eq!(ms(0.0123456), "12.346 ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(8.0), "8 B");
        assert_eq!(bytes(524288.0), "512 KiB");
        assert_eq!(bytes(8589934592.0), "8 GiB");
        assert_eq!(bytes(1.5e9), "1.397 GiB");
        assert_eq!(bytes(1.5 * GIB), "1.5 GiB");
        assert_eq!(bytes_decimal(1e6), "1 MB");
        assert_eq!(bytes_decimal(2.5e3), "2.5 kB");
        assert_eq!(bytes_decimal(4096.0), "4.1 kB");
        assert_eq!(gib(21.736 * GIB), "21.74 GiB");
    }

    #[test]
    fn lengths_and_counts() {
        assert_eq!(token_length(131072.0), "128K");
        assert_eq!(token_length(512.0), "512");
        assert_eq!(token_length(1048576.0), "1M");
        assert_eq!(count(77932.0), "77.9K");
        assert_eq!(count(1e6), "1M");
    }

    #[test]
    fn percentages() {
        assert_eq!(percent(0.1234), "12.3%");
        assert_eq!(signed_percent(0.25), "+25.0%");
        assert_eq!(signed_percent(-0.031), "-3.1%");
    }
}

//! Fluent Bit value types: booleans, decimal sizes and time units.
//!
//! Keeps Fluent Bit's exact semantics (`flb_utils_bool`, `flb_utils_size_to_bytes`,
//! `flb_utils_time_to_seconds`): sizes are decimal (`5M` = 5,000,000), a time's `M` means minutes.

use std::time::Duration;

/// `true/on/yes` and `false/off/no`, case-insensitive.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" => Some(true),
        "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

/// Decimal size: bare bytes, `K`/`M`/`G` (×1000ⁿ) with an optional `B`; `false`/`off` is 0.
pub fn parse_size(value: &str) -> Option<u64> {
    let v = value.trim();
    if matches!(v.to_ascii_lowercase().as_str(), "false" | "off") {
        return Some(0);
    }
    let upper = v.to_ascii_uppercase();
    let digits_end = upper
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(upper.len());
    let (number, unit) = upper.split_at(digits_end);
    let number: f64 = number.parse().ok()?;
    let multiplier = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        _ => return None,
    };
    Some((number * multiplier) as u64)
}

/// Time with Fluent Bit's suffixes: `d`, `h`, `m`/`M` (minutes), `s` or none (seconds).
/// Fractions (`0.5`, `1.25s`) are accepted as `Flush` and `Refresh_Interval` allow them.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let v = value.trim();
    let (number, unit_secs) = match v.chars().last()? {
        'd' | 'D' => (&v[..v.len() - 1], 86_400.0),
        'h' | 'H' => (&v[..v.len() - 1], 3_600.0),
        'm' | 'M' => (&v[..v.len() - 1], 60.0),
        's' | 'S' => (&v[..v.len() - 1], 1.0),
        _ => (v, 1.0),
    };
    let n: f64 = number.trim().parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(n * unit_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_decimal() {
        assert_eq!(parse_size("5M"), Some(5_000_000));
        assert_eq!(parse_size("5MB"), Some(5_000_000));
        assert_eq!(parse_size("32k"), Some(32_000));
        assert_eq!(parse_size("32768"), Some(32_768));
        assert_eq!(parse_size("1G"), Some(1_000_000_000));
        assert_eq!(parse_size("off"), Some(0));
        assert_eq!(parse_size("12Q"), None);
    }

    #[test]
    fn times_use_minutes_for_m() {
        assert_eq!(parse_duration("10M"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("On"), Some(true));
        assert_eq!(parse_bool("no"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}

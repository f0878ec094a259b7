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

/// The largest size: Fluent Bit's sizes are signed 64-bit byte counts.
pub const MAX_SIZE: u64 = i64::MAX as u64;

/// The longest time: Fluent Bit's times are `int` seconds (about 68 years).
pub const MAX_DURATION: Duration = Duration::from_secs(i32::MAX as u64);

/// Decimal size: bare bytes, `K`/`M`/`G` (×1000ⁿ) with an optional `B`; `false`/`off` is 0.
/// Negative and out-of-range values (above [`MAX_SIZE`]) are errors, never clamped.
pub fn size(value: &str) -> Result<u64, String> {
    let v = value.trim();
    if matches!(v.to_ascii_lowercase().as_str(), "false" | "off") {
        return Ok(0);
    }
    if v.starts_with('-') {
        return Err(format!("'{v}' is negative: a size is at least 0"));
    }
    let upper = v.to_ascii_uppercase();
    let digits_end = upper
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(upper.len());
    let (number, unit) = upper.split_at(digits_end);
    let not_a_size = || format!("'{v}' is not a size (e.g. 32k, 5M, 1G)");
    let too_large = || format!("'{v}' is too large: a size is at most {MAX_SIZE} bytes");
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        _ => return Err(not_a_size()),
    };
    let bytes = if number.contains('.') {
        let n: f64 = number.parse().map_err(|_| not_a_size())?;
        // Saturates at u64::MAX, which is above MAX_SIZE.
        (n * multiplier as f64) as u64
    } else if number.is_empty() {
        return Err(not_a_size());
    } else {
        // Digits only: an integer overflow is the only way to fail.
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .ok_or_else(too_large)?
    };
    if bytes > MAX_SIZE {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Time with Fluent Bit's suffixes: `d`, `h`, `m`/`M` (minutes), `s` or none (seconds).
/// Fractions (`0.5`, `1.25s`) are accepted as `Flush` and `Refresh_Interval` allow them.
/// Negative, non-finite and out-of-range values (above [`MAX_DURATION`]) are errors.
pub fn duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let not_a_time = || format!("'{v}' is not a time (e.g. 5, 10s, 1m, 2h)");
    let (number, unit_secs) = match v.chars().last().ok_or_else(not_a_time)? {
        'd' | 'D' => (&v[..v.len() - 1], 86_400.0),
        'h' | 'H' => (&v[..v.len() - 1], 3_600.0),
        'm' | 'M' => (&v[..v.len() - 1], 60.0),
        's' | 'S' => (&v[..v.len() - 1], 1.0),
        _ => (v, 1.0),
    };
    let n: f64 = number.trim().parse().map_err(|_| not_a_time())?;
    if !n.is_finite() {
        return Err(format!("'{v}' is not a finite number of seconds"));
    }
    if n < 0.0 {
        return Err(format!("'{v}' is negative: a time is at least 0"));
    }
    let secs = n * unit_secs;
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "'{v}' is too long: a time is at most {} seconds (about 68 years)",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// [`duration`] without the reason (`-f/--flush`, `Grace`).
pub fn parse_duration(value: &str) -> Option<Duration> {
    duration(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_decimal() {
        assert_eq!(size("5M"), Ok(5_000_000));
        assert_eq!(size("5MB"), Ok(5_000_000));
        assert_eq!(size("32k"), Ok(32_000));
        assert_eq!(size("32768"), Ok(32_768));
        assert_eq!(size("1G"), Ok(1_000_000_000));
        assert_eq!(size("1.5K"), Ok(1_500));
        assert_eq!(size("off"), Ok(0));
        assert!(size("12Q").unwrap_err().contains("is not a size"));
        assert!(size("").unwrap_err().contains("is not a size"));
        assert!(size("M").unwrap_err().contains("is not a size"));
    }

    #[test]
    fn huge_negative_and_non_numeric_sizes_are_errors() {
        assert_eq!(size("9223372036854775807"), Ok(MAX_SIZE));
        for huge in [
            "9223372036854775808",
            "99999999999999999999",
            "99999999999G",
            "9223372036854776K",
            "99999999999999999999999999999999999.5G",
        ] {
            let e = size(huge).unwrap_err();
            assert!(e.contains("too large"), "{huge}: {e}");
        }
        assert!(size("-5M").unwrap_err().contains("negative"));
        // Fluent Bit has no T unit: an unknown unit, not a clamp.
        assert!(size("99999999999T").unwrap_err().contains("is not a size"));
        for nonsense in ["NaN", "inf", "1e30", "-inf"] {
            assert!(size(nonsense).is_err(), "{nonsense}");
        }
    }

    #[test]
    fn times_use_minutes_for_m() {
        assert_eq!(duration("10M"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(duration("x").unwrap_err().contains("is not a time"));
        assert!(duration("").unwrap_err().contains("is not a time"));
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn huge_negative_and_non_finite_times_are_errors_not_panics() {
        assert_eq!(duration("2147483647"), Ok(MAX_DURATION));
        for huge in [
            "1e30",
            "99999999999999999999",
            "2147483648",
            "24856d",
            "1e300h",
            "1.7976931348623157e308d",
        ] {
            let e = duration(huge).unwrap_err();
            assert!(e.contains("too long"), "{huge}: {e}");
        }
        for negative in ["-1", "-0.5s", "-99999999999999999999d"] {
            let e = duration(negative).unwrap_err();
            assert!(e.contains("negative"), "{negative}: {e}");
        }
        for non_finite in ["NaN", "nan", "inf", "-inf", "infinity", "1e999"] {
            let e = duration(non_finite).unwrap_err();
            assert!(e.contains("not a finite number"), "{non_finite}: {e}");
        }
        assert_eq!(parse_duration("1e30"), None);
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("On"), Some(true));
        assert_eq!(parse_bool("no"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}

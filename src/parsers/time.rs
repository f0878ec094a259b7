//! Time parsing for `Time_Format`: a hand-written RFC 3339 fast path (CRI and docker stamp every
//! line with one; chrono's generic parser costs ~10x more per line) and chrono for the rest.

use crate::record::EventTime;

/// `Time_Format` compiled once per parser.
#[derive(Debug, Clone)]
pub enum TimeFormat {
    /// `%Y-%m-%dT%H:%M:%S[.%L][%z]` and its space-separated form.
    Rfc3339,
    /// Any other strftime format, translated for chrono (`%L` → fraction).
    Chrono { format: String, has_zone: bool },
}

impl TimeFormat {
    pub fn new(fluent_bit_format: &str) -> Self {
        let f = fluent_bit_format.trim();
        let iso = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"];
        let rest = iso.iter().find_map(|p| f.strip_prefix(p));
        if let Some(rest) = rest {
            if matches!(
                rest,
                "" | ".%L" | "%z" | ".%L%z" | ".%LZ" | "Z" | ".%L%Z" | "%Z"
            ) {
                return TimeFormat::Rfc3339;
            }
        }
        let has_zone = f.contains("%z") || f.contains("%Z");
        TimeFormat::Chrono {
            format: f
                .replace(".%L", "%.f")
                .replace("%L", "%f")
                .replace("%Z", "%z"),
            has_zone,
        }
    }

    pub fn parse(&self, text: &[u8]) -> Option<EventTime> {
        match self {
            TimeFormat::Rfc3339 => parse_rfc3339(text),
            TimeFormat::Chrono { format, has_zone } => {
                let s = std::str::from_utf8(text).ok()?.trim();
                if *has_zone {
                    let s = s.strip_suffix('Z').map(|p| format!("{p}+0000"));
                    let s = s.as_deref().unwrap_or(text_str(text)?.trim());
                    let dt = chrono::DateTime::parse_from_str(s, format).ok()?;
                    Some(EventTime {
                        sec: dt.timestamp(),
                        nsec: dt.timestamp_subsec_nanos(),
                    })
                } else {
                    let dt = chrono::NaiveDateTime::parse_from_str(s, format)
                        .ok()?
                        .and_utc();
                    Some(EventTime {
                        sec: dt.timestamp(),
                        nsec: dt.timestamp_subsec_nanos(),
                    })
                }
            }
        }
    }
}

fn text_str(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

fn digits(b: &[u8]) -> Option<i64> {
    let mut v: i64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as i64;
    }
    Some(v)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD(T| )HH:MM:SS[.fraction][Z|±HH:MM|±HHMM]`; no zone means UTC.
pub fn parse_rfc3339(b: &[u8]) -> Option<EventTime> {
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (h, mi, s) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut nsec: u32 = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nsec = nsec * 10 + (b[i] - b'0') as u32;
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..9 {
            nsec *= 10;
        }
    }
    let mut offset = 0i64;
    if i < b.len() {
        match b[i] {
            b'Z' | b'z' if i + 1 == b.len() => {}
            b'+' | b'-' => {
                let sign = if b[i] == b'-' { -1 } else { 1 };
                let z = &b[i + 1..];
                let (oh, om) = match z.len() {
                    5 if z[2] == b':' => (digits(&z[0..2])?, digits(&z[3..5])?),
                    4 => (digits(&z[0..2])?, digits(&z[2..4])?),
                    2 => (digits(z)?, 0),
                    _ => return None,
                };
                offset = sign * (oh * 3600 + om * 60);
            }
            _ => return None,
        }
    }
    let sec = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset;
    Some(EventTime { sec, nsec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_variants() {
        let t = parse_rfc3339(b"2024-03-01T12:34:56.123456789Z").unwrap();
        assert_eq!((t.sec, t.nsec), (1_709_296_496, 123_456_789));
        let t = parse_rfc3339(b"2024-03-01T12:34:56.5+01:00").unwrap();
        assert_eq!((t.sec, t.nsec), (1_709_292_896, 500_000_000));
        assert!(parse_rfc3339(b"2024-03-01T12:34").is_none());
        assert!(parse_rfc3339(b"2024-03-01T12:34:56.Z").is_none());
    }

    #[test]
    fn chrono_formats() {
        let f = TimeFormat::new("%d/%b/%Y:%H:%M:%S %z");
        let t = f.parse(b"10/Oct/2000:13:55:36 -0700").unwrap();
        assert_eq!(t.sec, 971_211_336);
        assert!(matches!(
            TimeFormat::new("%Y-%m-%dT%H:%M:%S.%L%z"),
            TimeFormat::Rfc3339
        ));
    }
}

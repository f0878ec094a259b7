//! Time parsing for `Time_Format`, read as Fluent Bit reads it (`flb_strptime` driven by
//! `flb_parser_time_lookup`), plus the hand-written RFC 3339 reader the built-in `cri`/`docker`
//! multiline parsers use.
//!
//! Fluent Bit's rules, kept here:
//! - the text may go on after the format ends (`%Y-%m-%dT%H:%M:%S.%L` reads `…56.123Z`);
//! - running out of text before the format ends is a failure;
//! - whitespace in the format skips any whitespace in the text; `%e` also takes a leading space;
//! - `%L` is 1–9 digits of fraction; `%z` takes `Z`, `UT`, `UTC`, `GMT`, `±hh`, `±hhmm`, `±hh:mm`
//!   and the North American zone names; `%Z` takes the usual zone abbreviations;
//! - a format without a year (`%b %d %H:%M:%S`) is read in the current year (UTC, or local time
//!   with `Time_System_Timezone`), and without a month or day, today's;
//! - `Time_Offset` applies when the format reads no zone (`%z`, `%Z`, or a literal `Z` after the
//!   seconds); `Time_Strict Off` keeps what was read before a mismatch instead of failing.
//!
//! Not supported: `Time_Zone` (IANA zone names) — rejected when the parser is loaded.

use chrono::{Datelike, TimeZone};

use crate::record::EventTime;

/// How a parser turns its `Time_Format` matches into an instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeOptions {
    /// `Time_Offset`, seconds east of UTC, for formats that read no zone.
    pub offset: i32,
    /// `Time_Strict` (default on): a text that does not match the whole format is no time.
    pub strict: bool,
    /// `Time_System_Timezone`: zone-less times are local time, not UTC.
    pub system_timezone: bool,
}

/// `Time_Format` compiled once per parser.
#[derive(Debug, Clone)]
pub struct TimeFormat {
    items: Vec<Item>,
    /// The format reads a year (`%Y`, `%y`) or an epoch (`%s`); otherwise the current one is used.
    with_year: bool,
    /// The format reads a zone: `Time_Offset` and `Time_System_Timezone` do not apply.
    with_zone: bool,
    options: TimeOptions,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Year,
    YearInCentury,
    Century,
    Month,
    Day,
    Hour,
    Hour12,
    Minute,
    Second,
    YearDay,
    /// Read and range-checked, no effect (week numbers, weekday numbers, ISO week year).
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Item {
    /// Whitespace in the format (also `%n`, `%t`): skips any whitespace in the text.
    Space,
    Literal(u8),
    /// `%e`: one optional space before the day.
    OptionalSpace,
    Number(Field, u32, u32),
    MonthName,
    WeekdayName,
    AmPm,
    /// `%L`
    Fraction,
    /// `%z`
    Offset,
    /// `%Z`
    ZoneName,
    /// `%s`
    Epoch,
    /// `%G`: digits, ignored.
    Digits,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Zone abbreviations `%Z` knows, first match wins (seconds east of UTC); military letters last.
const ZONES: &[(&str, i32)] = &[
    ("GMT", 0),
    ("UTC", 0),
    ("Z", 0),
    ("UT", 0),
    ("EST", -5 * 3600),
    ("EDT", -4 * 3600),
    ("CST", -6 * 3600),
    ("CDT", -5 * 3600),
    ("MST", -7 * 3600),
    ("MDT", -6 * 3600),
    ("PST", -8 * 3600),
    ("PDT", -7 * 3600),
    ("AKST", -9 * 3600),
    ("AKDT", -8 * 3600),
    ("HST", -10 * 3600),
    ("HADT", -9 * 3600),
    ("AST", -4 * 3600),
    ("ADT", -3 * 3600),
    ("NST", -12_600),
    ("NDT", -9_000),
    ("WET", 0),
    ("WEST", 3600),
    ("CET", 3600),
    ("CEST", 2 * 3600),
    ("EET", 2 * 3600),
    ("EEST", 3 * 3600),
    ("MSK", 3 * 3600),
    ("ART", -3 * 3600),
    ("BRT", -3 * 3600),
    ("BRST", -2 * 3600),
    ("CLT", -4 * 3600),
    ("CLST", -3 * 3600),
    ("AEST", 10 * 3600),
    ("AEDT", 11 * 3600),
    ("ACST", 34_200),
    ("ACDT", 37_800),
    ("AWST", 8 * 3600),
    ("NZST", 12 * 3600),
    ("NZDT", 13 * 3600),
    ("JST", 9 * 3600),
    ("KST", 9 * 3600),
    ("SGT", 8 * 3600),
    ("IST", 19_800),
    ("GST", 4 * 3600),
    ("ICT", 7 * 3600),
    ("WIB", 7 * 3600),
    ("WITA", 8 * 3600),
    ("WIT", 9 * 3600),
    ("MYT", 8 * 3600),
    ("BDT", 6 * 3600),
    ("NPT", 20_700),
    ("WAT", 3600),
    ("CAT", 2 * 3600),
    ("EAT", 3 * 3600),
    ("SAST", 2 * 3600),
];

/// `%z`'s North American names: standard time (EST..PST = -5..-8 h), then daylight (-4..-7 h).
const NA_STANDARD: [&str; 4] = ["EST", "CST", "MST", "PST"];
const NA_DAYLIGHT: [&str; 4] = ["EDT", "CDT", "MDT", "PDT"];

impl TimeFormat {
    /// Compiles a `Time_Format`; the error names an unknown conversion.
    pub fn new(format: &str, options: TimeOptions) -> Result<Self, String> {
        let mut items = Vec::new();
        compile(format.as_bytes(), &mut items)?;
        Ok(TimeFormat {
            items,
            with_year: ["%Y", "%y", "%s"].iter().any(|c| format.contains(c)),
            with_zone: ["%z", "%Z", "%SZ", "%S.%LZ"]
                .iter()
                .any(|c| format.contains(c)),
            options,
        })
    }

    /// Reads `text`; `None` when it does not match (Fluent Bit then stamps the record "now").
    pub fn parse(&self, text: &[u8]) -> Option<EventTime> {
        self.parse_at(text, EventTime::now().sec)
    }

    /// [`TimeFormat::parse`] with "now" given (it supplies the year of year-less formats).
    pub fn parse_at(&self, text: &[u8], now: i64) -> Option<EventTime> {
        let mut tm = Tm::default();
        if !self.with_year {
            let (y, m, d) = if self.options.system_timezone {
                let local = chrono::Local.timestamp_opt(now, 0).single()?;
                (local.year() as i64, local.month(), local.day())
            } else {
                civil_from_days(now.div_euclid(86_400))
            };
            tm.year = y;
            tm.month = m - 1;
            tm.day = d;
        }
        if tm.read(&self.items, text).is_none() && self.options.strict {
            return None;
        }
        tm.finish();
        let days = days_from_civil(tm.year, tm.month as i64 + 1, tm.day as i64);
        let wall = days * 86_400 + tm.hour as i64 * 3600 + tm.minute as i64 * 60 + tm.second as i64;
        let sec = if self.with_zone {
            wall - tm.offset as i64
        } else if self.options.system_timezone {
            let naive = chrono::DateTime::from_timestamp(wall, 0)?.naive_utc();
            chrono::Local
                .from_local_datetime(&naive)
                .earliest()?
                .timestamp()
        } else {
            wall - self.options.offset as i64
        };
        Some(EventTime { sec, nsec: tm.nsec })
    }
}

/// Expands a strftime format into items; composite conversions (`%T`, `%D`…) are expanded in place.
fn compile(f: &[u8], items: &mut Vec<Item>) -> Result<(), String> {
    let mut i = 0;
    while i < f.len() {
        let c = f[i];
        i += 1;
        if c.is_ascii_whitespace() {
            items.push(Item::Space);
            continue;
        }
        if c != b'%' {
            items.push(Item::Literal(c));
            continue;
        }
        // `%E?` and `%O?` (alternative representations) read as the plain conversion.
        while i < f.len() && matches!(f[i], b'E' | b'O') {
            i += 1;
        }
        let Some(&conv) = f.get(i) else {
            return Err("time format ends with '%'".into());
        };
        i += 1;
        let composite = match conv {
            b'c' => Some("%a %b %e %H:%M:%S %Y"),
            b'D' | b'x' => Some("%m/%d/%y"),
            b'F' => Some("%Y-%m-%d"),
            b'R' => Some("%H:%M"),
            b'r' => Some("%I:%M:%S %p"),
            b'T' | b'X' => Some("%H:%M:%S"),
            _ => None,
        };
        if let Some(expansion) = composite {
            compile(expansion.as_bytes(), items)?;
            continue;
        }
        let item = match conv {
            b'%' => Item::Literal(b'%'),
            b'n' | b't' => Item::Space,
            b'Y' => Item::Number(Field::Year, 0, 9999),
            b'y' => Item::Number(Field::YearInCentury, 0, 99),
            b'C' => Item::Number(Field::Century, 0, 99),
            b'm' => Item::Number(Field::Month, 1, 12),
            b'e' => {
                items.push(Item::OptionalSpace);
                Item::Number(Field::Day, 1, 31)
            }
            b'd' => Item::Number(Field::Day, 1, 31),
            b'H' | b'k' => Item::Number(Field::Hour, 0, 23),
            b'I' | b'l' => Item::Number(Field::Hour12, 1, 12),
            b'M' => Item::Number(Field::Minute, 0, 59),
            b'S' => Item::Number(Field::Second, 0, 60),
            b'j' => Item::Number(Field::YearDay, 1, 366),
            b'U' | b'W' | b'V' => Item::Number(Field::Ignored, 0, 53),
            b'w' => Item::Number(Field::Ignored, 0, 6),
            b'u' => Item::Number(Field::Ignored, 1, 7),
            b'g' => Item::Number(Field::Ignored, 0, 99),
            b'G' => Item::Digits,
            b'b' | b'B' | b'h' => Item::MonthName,
            b'a' | b'A' => Item::WeekdayName,
            b'p' => Item::AmPm,
            b'L' => Item::Fraction,
            b'z' => Item::Offset,
            b'Z' => Item::ZoneName,
            b's' => Item::Epoch,
            other => {
                return Err(format!(
                    "time format conversion '%{}' is not supported",
                    other as char
                ))
            }
        };
        items.push(item);
    }
    Ok(())
}

/// The broken-down time being read (`struct tm` plus what `flb_strptime` tracks beside it).
#[derive(Debug, Default)]
struct Tm {
    year: i64,
    /// 0-based, as `tm_mon`.
    month: u32,
    /// 0 until read, as in a zeroed `struct tm` (day 0 is the last day of the previous month).
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nsec: u32,
    /// Seconds east of UTC read by `%z`/`%Z`.
    offset: i32,
    year_in_century: Option<u32>,
    century: Option<u32>,
    year_day: Option<u32>,
    month_read: bool,
    day_read: bool,
}

impl Tm {
    /// Reads `text` item by item; `None` at the first mismatch (what was read so far stays).
    fn read(&mut self, items: &[Item], text: &[u8]) -> Option<()> {
        let mut p = 0;
        for item in items {
            if *item == Item::Space {
                while p < text.len() && text[p].is_ascii_whitespace() {
                    p += 1;
                }
                continue;
            }
            if p >= text.len() {
                return None;
            }
            match *item {
                Item::Space => {}
                Item::Literal(c) => {
                    if text[p] != c {
                        return None;
                    }
                    p += 1;
                }
                Item::OptionalSpace => {
                    if text[p].is_ascii_whitespace() {
                        p += 1;
                    }
                }
                Item::Number(field, min, max) => {
                    let v = number(text, &mut p, min, max)?;
                    self.set(field, v);
                }
                Item::MonthName => {
                    self.month = name(text, &mut p, &MONTHS)? as u32;
                    self.month_read = true;
                }
                Item::WeekdayName => {
                    name(text, &mut p, &WEEKDAYS)?;
                }
                Item::AmPm => {
                    let word = text.get(p..p + 2)?;
                    if word.eq_ignore_ascii_case(b"AM") {
                        if self.hour > 12 {
                            return None;
                        }
                        if self.hour == 12 {
                            self.hour = 0;
                        }
                    } else if word.eq_ignore_ascii_case(b"PM") {
                        if self.hour > 12 {
                            return None;
                        }
                        if self.hour < 12 {
                            self.hour += 12;
                        }
                    } else {
                        return None;
                    }
                    p += 2;
                }
                Item::Fraction => {
                    let start = p;
                    let mut nsec = 0u32;
                    while p < text.len() && p - start < 9 && text[p].is_ascii_digit() {
                        nsec = nsec * 10 + (text[p] - b'0') as u32;
                        p += 1;
                    }
                    if p == start {
                        return None;
                    }
                    self.nsec = nsec * 10u32.pow(9 - (p - start) as u32);
                }
                Item::Offset => self.offset = offset(text, &mut p)?,
                Item::ZoneName => {
                    let rest = &text[p..];
                    let (abbr, off) = ZONES.iter().find(|(abbr, _)| {
                        rest.len() >= abbr.len()
                            && rest[..abbr.len()].eq_ignore_ascii_case(abbr.as_bytes())
                            && !rest
                                .get(abbr.len())
                                .is_some_and(|c| c.is_ascii_alphanumeric())
                    })?;
                    self.offset = *off;
                    p += abbr.len();
                }
                Item::Epoch => {
                    let start = p;
                    let mut v: i64 = 0;
                    while p < text.len() && text[p].is_ascii_digit() {
                        v = v.checked_mul(10)?.checked_add((text[p] - b'0') as i64)?;
                        p += 1;
                    }
                    if p == start {
                        return None;
                    }
                    let (y, m, d) = civil_from_days(v.div_euclid(86_400));
                    let s = v.rem_euclid(86_400) as u32;
                    (self.year, self.month, self.day) = (y, m - 1, d);
                    (self.hour, self.minute, self.second) = (s / 3600, s / 60 % 60, s % 60);
                    (self.offset, self.month_read, self.day_read) = (0, true, true);
                }
                Item::Digits => {
                    while p < text.len() && text[p].is_ascii_digit() {
                        p += 1;
                    }
                }
            }
        }
        Some(())
    }

    fn set(&mut self, field: Field, v: u32) {
        match field {
            Field::Year => {
                self.year = v as i64;
                self.year_in_century = None;
            }
            Field::YearInCentury => self.year_in_century = Some(v),
            Field::Century => self.century = Some(v),
            Field::Month => {
                self.month = v - 1;
                self.month_read = true;
            }
            Field::Day => {
                self.day = v;
                self.day_read = true;
            }
            Field::Hour | Field::Hour12 => self.hour = v,
            Field::Minute => self.minute = v,
            Field::Second => self.second = v,
            Field::YearDay => self.year_day = Some(v - 1),
            Field::Ignored => {}
        }
    }

    /// Two-digit years (1969–2068 unless `%C` gave the century) and dates from a day of the year.
    fn finish(&mut self) {
        if let Some(yy) = self.year_in_century {
            self.year = match self.century {
                Some(c) => (c * 100 + yy) as i64,
                None if yy <= 68 => 2000 + yy as i64,
                None => 1900 + yy as i64,
            };
        }
        if let Some(yday) = self.year_day {
            let first = days_from_civil(self.year, 1, 1);
            let (_, m, d) = civil_from_days(first + yday as i64);
            if !self.month_read {
                self.month = m - 1;
            }
            if !self.day_read {
                self.day = d;
            }
        }
    }
}

/// `_conv_num`: at least one digit, at most as many as `max` has, within `min..=max`.
fn number(text: &[u8], p: &mut usize, min: u32, max: u32) -> Option<u32> {
    if !text.get(*p)?.is_ascii_digit() {
        return None;
    }
    let mut v = 0u32;
    let mut room = max;
    loop {
        v = v * 10 + (text[*p] - b'0') as u32;
        *p += 1;
        room /= 10;
        if v * 10 > max || room == 0 || !text.get(*p).is_some_and(|c| c.is_ascii_digit()) {
            break;
        }
    }
    (min..=max).contains(&v).then_some(v)
}

/// A month or weekday name, full or three-letter, any case; returns its index.
fn name(text: &[u8], p: &mut usize, names: &[&str]) -> Option<usize> {
    let rest = &text[*p..];
    let starts =
        |n: &str| rest.len() >= n.len() && rest[..n.len()].eq_ignore_ascii_case(n.as_bytes());
    names.iter().enumerate().find_map(|(i, full)| {
        let len = [full.len(), 3].into_iter().find(|&l| starts(&full[..l]))?;
        *p += len;
        Some(i)
    })
}

/// `%z`: seconds east of UTC.
fn offset(text: &[u8], p: &mut usize) -> Option<i32> {
    while text.get(*p).is_some_and(|c| c.is_ascii_whitespace()) {
        *p += 1;
    }
    let rest = &text[*p..];
    let sign = match rest.first()? {
        b'Z' => {
            *p += 1;
            return Some(0);
        }
        b'+' => 1,
        b'-' => -1,
        _ => {
            for word in ["GMT", "UTC", "UT"] {
                if rest.starts_with(word.as_bytes()) {
                    *p += word.len();
                    return Some(0);
                }
            }
            for (hours, names) in [(-5, &NA_STANDARD), (-4, &NA_DAYLIGHT)] {
                if let Some(i) = names.iter().position(|n| rest.starts_with(n.as_bytes())) {
                    *p += 3;
                    return Some((hours - i as i32) * 3600);
                }
            }
            return None;
        }
    };
    let digit = |i: usize| {
        rest.get(i)
            .filter(|c| c.is_ascii_digit())
            .map(|c| (c - b'0') as i32)
    };
    let mut secs = (digit(1)? * 10 + digit(2)?) * 3600;
    let mut i = 3;
    if rest.get(i) == Some(&b':') {
        i += 1;
    }
    if let Some(tens) = digit(i) {
        secs += (tens * 10 + digit(i + 1)?) * 60;
        i += 2;
    }
    *p += i;
    Some(sign * secs)
}

/// `Time_Offset`: `Z`, `±hhmm` or `±hh:mm`, as seconds east of UTC.
pub fn parse_offset(text: &str) -> Option<i32> {
    let t = text.trim().as_bytes();
    if t.first() == Some(&b'Z') {
        return Some(0);
    }
    let sign = match t.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let d = |i: usize| {
        t.get(i)
            .filter(|c| c.is_ascii_digit())
            .map(|c| (c - b'0') as i32)
    };
    let (h, m) = match t.len() {
        5 => (d(1)? * 10 + d(2)?, d(3)? * 10 + d(4)?),
        6 if t[3] == b':' => (d(1)? * 10 + d(2)?, d(4)? * 10 + d(5)?),
        _ => return None,
    };
    (m < 60).then_some(sign * (h * 3600 + m * 60))
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

/// The date of a day number since 1970-01-01: (year, month 1–12, day 1–31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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

    fn fmt(f: &str) -> TimeFormat {
        TimeFormat::new(
            f,
            TimeOptions {
                strict: true,
                ..TimeOptions::default()
            },
        )
        .unwrap()
    }

    /// 2024-06-01T00:00:00Z: "now" for year-less formats.
    const JUNE_2024: i64 = 1_717_200_000;

    fn at(f: &str, text: &str) -> Option<(i64, u32)> {
        fmt(f)
            .parse_at(text.as_bytes(), JUNE_2024)
            .map(|t| (t.sec, t.nsec))
    }

    #[test]
    fn fluent_bit_strptime() {
        let apache = "%d/%b/%Y:%H:%M:%S %z";
        assert_eq!(
            at(apache, "10/Oct/2000:13:55:36 -0700"),
            Some((971_211_336, 0))
        );
        let iso = "%Y-%m-%dT%H:%M:%S.%L%z";
        assert_eq!(
            at(iso, "2003-10-11T22:14:15.003Z"),
            Some((1_065_910_455, 3_000_000))
        );
        assert_eq!(
            at(iso, "2003-10-11T22:14:15.003+02:00"),
            Some((1_065_903_255, 3_000_000))
        );
        assert_eq!(
            at(iso, "2003-10-11T22:14:15.003 UTC"),
            Some((1_065_910_455, 3_000_000))
        );
        // The text may go on after the format; it may not stop before it.
        let docker = "%Y-%m-%dT%H:%M:%S.%L";
        assert_eq!(
            at(docker, "2024-03-01T12:34:56.123456789Z"),
            Some((1_709_296_496, 123_456_789))
        );
        assert_eq!(at(docker, "2024-03-01T12:34:56"), None);
        assert_eq!(at(docker, "2024-13-01T12:34:56.1"), None);
        // No year: the current one; whitespace in the format takes any run of spaces.
        let syslog = "%b %d %H:%M:%S";
        assert_eq!(at(syslog, "Oct 11 22:14:15"), Some((1_728_684_855, 0)));
        assert_eq!(at(syslog, "Oct  1 22:14:15"), Some((1_727_820_855, 0)));
        assert_eq!(at("%s", "1065910455"), Some((1_065_910_455, 0)));
        assert_eq!(at("%y-%j", "24-040"), Some((1_707_436_800, 0)));
        assert_eq!(
            at("%m/%d/%Y %I:%M %p %Z", "12/31/1999 6:00 PM EST"),
            Some((946_681_200, 0))
        );
        assert!(TimeFormat::new("%Q", TimeOptions::default()).is_err());
    }

    #[test]
    fn offset_strict_and_system_zone_options() {
        let with = |offset, strict| {
            TimeFormat::new(
                "%Y-%m-%d %H:%M:%S",
                TimeOptions {
                    offset,
                    strict,
                    system_timezone: false,
                },
            )
            .unwrap()
        };
        let t = with(3600, true)
            .parse_at(b"2024-06-01 01:00:00", 0)
            .unwrap();
        assert_eq!(
            t.sec, JUNE_2024,
            "Time_Offset +0100 applies to zone-less times"
        );
        let zoned = TimeFormat::new(
            "%Y-%m-%d %H:%M:%S%z",
            TimeOptions {
                offset: 3600,
                strict: true,
                system_timezone: false,
            },
        )
        .unwrap();
        assert_eq!(
            zoned.parse_at(b"2024-06-01 00:00:00Z", 0).unwrap().sec,
            JUNE_2024
        );
        assert!(with(0, true).parse_at(b"2024-06-01 00:xx", 0).is_none());
        let partial = with(0, false).parse_at(b"2024-06-01 00:xx", 0).unwrap();
        assert_eq!(
            partial.sec, JUNE_2024,
            "Time_Strict Off keeps what was read"
        );
        assert_eq!(parse_offset("+01:30"), Some(5400));
        assert_eq!(parse_offset("-0200"), Some(-7200));
        assert_eq!(parse_offset("Z"), Some(0));
        assert_eq!(parse_offset("+1"), None);
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_468, -1, 0, 59, 10_957, 19_875, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m as i64, d as i64), days);
        }
    }
}

//! The ISO 8601 times of Celery's messages and results (`eta`, `expires`, `date_done`): written
//! as Python's `datetime.isoformat()` writes an aware UTC time, read in the forms Celery sends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `time` as `2026-12-04T11:09:44.113107+00:00` (microseconds, UTC), as Celery's
/// `app.now().isoformat()` writes it with the default `UTC` timezone.
pub(crate) fn isoformat(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_micros()
    )
}

/// Parse `YYYY-MM-DDTHH:MM:SS[.fraction][Z|±HH:MM]` (a space may stand for the `T`); a time
/// without an offset is taken as UTC, as Celery's default `enable_utc` does.
pub(crate) fn parse_iso(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = text.get(from..from + len)?;
        digits
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0u32;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        let digits = &text[start..at];
        if digits.is_empty() {
            return None;
        }
        let mut scaled = String::from(&digits[..digits.len().min(9)]);
        while scaled.len() < 9 {
            scaled.push('0');
        }
        nanos = scaled.parse().ok()?;
    }
    let offset_secs = match &text[at..] {
        "" | "Z" | "z" => 0,
        rest => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let rest = &rest[1..];
            let (h, m) = match rest.len() {
                5 if rest.as_bytes()[2] == b':' => {
                    (rest[..2].parse::<i64>().ok()?, rest[3..].parse::<i64>().ok()?)
                }
                4 => (rest[..2].parse::<i64>().ok()?, rest[2..].parse::<i64>().ok()?),
                2 => (rest.parse::<i64>().ok()?, 0),
                _ => return None,
            };
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_python_isoformat_of_an_aware_utc_time() {
        // 2026-12-04T11:09:44.113107+00:00
        let t = UNIX_EPOCH + Duration::new(1_796_382_584, 113_107_000);
        assert_eq!(isoformat(t), "2026-12-04T11:09:44.113107+00:00");
        assert_eq!(isoformat(UNIX_EPOCH), "1970-01-01T00:00:00.000000+00:00");
    }

    #[test]
    fn parses_what_celery_and_others_write() {
        let t = UNIX_EPOCH + Duration::new(1_796_382_584, 113_107_000);
        assert_eq!(parse_iso("2026-12-04T11:09:44.113107+00:00"), Some(t));
        assert_eq!(parse_iso("2026-12-04T12:09:44.113107+01:00"), Some(t));
        assert_eq!(parse_iso("2026-12-04T11:09:44.113107Z"), Some(t));
        assert_eq!(parse_iso("2026-12-04 11:09:44.113107"), Some(t));
        assert_eq!(
            parse_iso("2026-12-04T11:09:44"),
            Some(UNIX_EPOCH + Duration::from_secs(1_796_382_584))
        );
        assert_eq!(
            parse_iso("2024-02-29T00:00:00+00:00").map(isoformat).as_deref(),
            Some("2024-02-29T00:00:00.000000+00:00")
        );
        for bad in [
            "",
            "2026-12-04",
            "2026-13-04T00:00:00",
            "2026-12-04T11:09:44+0",
            "tomorrow at noon",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
    }
}

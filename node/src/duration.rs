//! Go duration strings (`"10s"`, `"1m30s"`, `"500ms"`), the format Consul's API and our CLI use
//! for check intervals, timeouts and blocking-query waits.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Not in Go's `time.ParseDuration` grammar.
    #[error(
        "invalid duration {0:?} (expected a Go duration such as \"10s\", \"1m30s\" or \"500ms\")"
    )]
    Invalid(String),
    /// Negative durations mean nothing for intervals and timeouts.
    #[error("invalid duration {0:?}: it is negative")]
    Negative(String),
    /// Too large to represent.
    #[error("invalid duration {0:?}: it is too large")]
    Overflow(String),
}

/// Longest duration accepted: Go's `time.Duration` is an `i64` of nanoseconds (about 292 years), so
/// Consul never sends more. The bound also keeps `Instant::now() + d` from overflowing (a panic)
/// wherever a duration from the network becomes a deadline.
pub const MAX_DURATION: Duration = Duration::from_nanos(i64::MAX.unsigned_abs());

/// Parses a Go duration: a sequence of decimal numbers, each with an optional fraction and a unit
/// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as `"300ms"` or `"1h2m3.5s"`. `"0"` alone is
/// allowed, as in Go. A leading `+` is accepted; a leading `-` is rejected; more than
/// [`MAX_DURATION`] is an overflow, as in Go.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(input.to_owned());
    let mut s = input;
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    } else if s.starts_with('-') {
        return Err(DurationError::Negative(input.to_owned()));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &rest[..frac_len];
            s = &rest[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(s.len(), |(i, _)| i);
        let unit_nanos: u128 = match &s[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        s = &s[unit_len..];
        let overflow = || DurationError::Overflow(input.to_owned());
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(overflow)?;
        // Digits beyond nanosecond precision cannot matter; ignoring them keeps the maths exact.
        let mut scale = unit_nanos;
        for d in frac_part.bytes().take(30) {
            scale /= 10;
            // Checked: a whole part just under the limit plus a fraction must not wrap around
            // (release builds do not check overflow) into a small, accepted duration.
            nanos = nanos
                .checked_add(u128::from(d - b'0') * scale)
                .ok_or_else(overflow)?;
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
    }
    if total > MAX_DURATION.as_nanos() {
        return Err(DurationError::Overflow(input.to_owned()));
    }
    let nanos = u64::try_from(total).map_err(|_| DurationError::Overflow(input.to_owned()))?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats a duration the way Go's `Duration.String` does for the values Consul shows
/// (`"10s"`, `"1m30s"`, `"500ms"`, `"1h0m0s"`, `"0s"`).
pub fn format_go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", trim_fraction(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim_fraction(nanos, 1_000_000));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let secs = trim_fraction(nanos % 60_000_000_000, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{secs}s")
    } else if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// `value / unit` with the fraction written out and trailing zeros dropped, as Go does.
fn trim_fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let ms = Duration::from_millis;
        for (s, want) in [
            ("0", Duration::ZERO),
            ("10s", Duration::from_secs(10)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", ms(500)),
            ("1.5s", ms(1500)),
            (".5s", ms(500)),
            ("1h2m3s", Duration::from_secs(3723)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            ("+2m", Duration::from_secs(120)),
            ("1s500ms", ms(1500)),
        ] {
            assert_eq!(parse_go_duration(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        for s in [
            "",
            "10",
            "s",
            "1x",
            "1.s.",
            "1 s",
            "ten seconds",
            "1m 30s",
            ".",
        ] {
            assert!(
                matches!(parse_go_duration(s), Err(DurationError::Invalid(_))),
                "{s}"
            );
        }
        assert!(matches!(
            parse_go_duration("-1s"),
            Err(DurationError::Negative(_))
        ));
        for s in [
            "99999999999999999999999h",
            "2562048h",
            "9223372036854775808ns",
            // The whole part fills u128 but for less than the fraction adds: wrapping around
            // would have made this half an hour.
            "94522879700260684295381835.9h",
        ] {
            assert!(
                matches!(parse_go_duration(s), Err(DurationError::Overflow(_))),
                "{s}"
            );
        }
        assert_eq!(parse_go_duration("9223372036854775807ns"), Ok(MAX_DURATION));
    }

    #[test]
    fn formats_like_go() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_micros(250), "250µs"),
        ] {
            assert_eq!(format_go_duration(d), want);
            assert_eq!(parse_go_duration(want), Ok(d));
        }
    }
}

//! Number formatting and HTML escaping.

/// Bytes in a MiB.
pub const MIB: f64 = 1024.0 * 1024.0;

/// Formats seconds with a unit suited to the magnitude: `1.23 s`, `45.6 ms`, `789 µs`.
pub fn format_seconds(seconds: f64) -> String {
    let magnitude = seconds.abs();
    if magnitude == 0.0 {
        "0".to_owned()
    } else if magnitude >= 1.0 {
        format!("{} s", significant(seconds))
    } else if magnitude >= 1e-3 {
        format!("{} ms", significant(seconds * 1e3))
    } else {
        format!("{} µs", significant(seconds * 1e6))
    }
}

/// Formats seconds for an axis tick: as [`format_seconds`], without trailing zeros, so ticks
/// stay short (`1 ms`, `2.5 s`).
pub fn format_seconds_axis(seconds: f64) -> String {
    trim_zeros(&format_seconds(seconds))
}

/// Formats a value with three significant digits and without trailing zeros: `0.025`, `0.975`.
pub fn significant_trimmed(value: f64) -> String {
    trim_zeros(&significant(value))
}

/// Formats a MiB axis value, without trailing zeros.
pub fn format_bytes_axis(mib: f64) -> String {
    trim_zeros(&significant(mib))
}

/// Formats an MB/s axis value, without trailing zeros.
pub fn format_mb_s(mb_s: f64) -> String {
    trim_zeros(&significant(mb_s))
}

/// Removes trailing zeros after the decimal point of the number that starts `text`, and the
/// point itself when nothing follows it: `1.00 ms` becomes `1 ms`, `2.50` becomes `2.5`.
fn trim_zeros(text: &str) -> String {
    let end = text.find(' ').unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    if !number.contains('.') {
        return text.to_owned();
    }
    let trimmed = number.trim_end_matches('0').trim_end_matches('.');
    format!("{trimmed}{unit}")
}

/// Formats bytes as MiB with three significant digits.
pub fn format_mib(bytes: f64) -> String {
    format!("{} MiB", significant(bytes / MIB))
}

/// Formats a value with three significant digits, without exponent, as the summary's notes
/// do.
pub fn significant(value: f64) -> String {
    isobench_harness::summary::format_significant(value)
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_pick_unit() {
        assert_eq!(format_seconds(1.234), "1.23 s");
        assert_eq!(format_seconds(0.0456), "45.6 ms");
        assert_eq!(format_seconds(0.000789), "789 µs");
        assert_eq!(format_seconds(0.0), "0");
    }

    #[test]
    fn axis_values_drop_trailing_zeros() {
        assert_eq!(format_seconds_axis(0.001), "1 ms");
        assert_eq!(format_seconds_axis(2.5), "2.5 s");
        assert_eq!(format_seconds_axis(0.0), "0");
        assert_eq!(format_mb_s(10.0), "10");
        assert_eq!(format_mb_s(100.0), "100");
        assert_eq!(format_bytes_axis(-20.0), "-20");
        assert_eq!(format_bytes_axis(0.25), "0.25");
        assert_eq!(significant_trimmed(0.025), "0.025");
        assert_eq!(significant_trimmed(0.975), "0.975");
    }

    #[test]
    fn significant_keeps_three_digits() {
        assert_eq!(significant(123.4), "123");
        assert_eq!(significant(0.01234), "0.0123");
    }

    #[test]
    fn escape_replaces_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}

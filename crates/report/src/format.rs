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

/// Formats a MiB axis value.
pub fn format_bytes_axis(mib: f64) -> String {
    significant(mib)
}

/// Formats an MB/s axis value.
pub fn format_mb_s(mb_s: f64) -> String {
    significant(mb_s)
}

/// Formats bytes as MiB with three significant digits.
pub fn format_mib(bytes: f64) -> String {
    format!("{} MiB", significant(bytes / MIB))
}

/// Formats a value with three significant digits, without exponent.
pub fn significant(value: f64) -> String {
    let magnitude = value.abs();
    let decimals = if magnitude >= 100.0 || magnitude == 0.0 {
        0
    } else if magnitude >= 10.0 {
        1
    } else if magnitude >= 1.0 {
        2
    } else {
        (2 - magnitude.log10().floor() as i32).clamp(0, 9) as usize
    };
    format!("{value:.decimals$}")
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

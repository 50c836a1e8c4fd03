//! Flag values with units: sizes (`1GiB`, `512MiB`) and durations in seconds, as clap value
//! parsers shared by `serve` and `engine-core`'s flags.

/// Parses a byte count with an optional unit: B, KB/MB/GB (powers of 1000), KiB/MiB/GiB
/// (powers of 1024); K/M/G alone are binary.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 1GiB or 512MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    Ok((value * scale as f64) as u64)
}

/// The longest duration a flag takes, in seconds (about 31 years): beyond it a `Duration`
/// cannot be made from every value, and no limit that long means anything.
const MAX_SECONDS: f64 = 1e9;

/// A number of seconds above 0, at most [`MAX_SECONDS`].
pub(crate) fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= MAX_SECONDS => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds above 0 and at most {MAX_SECONDS:e}"
        )),
    }
}

/// A number of seconds from 0 to [`MAX_SECONDS`].
pub(crate) fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=MAX_SECONDS).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds from 0 to {MAX_SECONDS:e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_bytes, positive_seconds, seconds};

    #[test]
    fn request_timeouts_are_positive_seconds() {
        assert_eq!(positive_seconds("2.5"), Ok(2.5));
        for bad in ["0", "-1", "inf", "NaN", "soon", "1e30"] {
            assert!(positive_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(seconds("0"), Ok(0.0));
        assert_eq!(seconds("30"), Ok(30.0));
        for bad in ["-5", "inf", "-inf", "nan", "1e30"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
        assert_eq!(parse_bytes("1234"), Ok(1234));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }
}

//! Values of CLI arguments shared by the commands and the benchmarks:
//! parsers (durations, sizes, start positions, headers), so bad input is a
//! one-line error before any server is contacted, and [`DurabilityArg`].

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use clap::ValueEnum;
use strata_client::{Durability, Retention, StartFrom};

/// Words that mean "no limit" for retention settings.
fn is_unlimited(s: &str) -> bool {
    matches!(s.to_ascii_lowercase().as_str(), "infinite" | "unlimited" | "forever" | "-1")
}

/// A positive duration such as `500ms`, `30s`, `7d` or `1h 30m`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); examples: 500ms, 30s, 7d"))?;
    if d.is_zero() {
        return Err(format!("duration {s:?} must be greater than zero"));
    }
    Ok(d)
}

/// A duration that may be zero (e.g. `0ms` for "no linger").
pub(crate) fn duration_or_zero(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?} ({e}); examples: 0ms, 5ms, 1s"))
}

/// A time to live: a positive duration, or `forever` / `infinite` (zero
/// on the wire).
pub(crate) fn ttl(s: &str) -> Result<Duration, String> {
    if is_unlimited(s.trim()) || s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    duration(s).map_err(|e| format!("{e}, or forever"))
}

/// A retry backoff `MIN..MAX` such as `1s..60s` (`0s..0s`: at once).
pub(crate) fn retry_backoff(s: &str) -> Result<(Duration, Duration), String> {
    let Some((min, max)) = s.split_once("..") else {
        return Err(format!("invalid retry backoff {s:?}; expected MIN..MAX, e.g. 1s..60s"));
    };
    let min = duration_or_zero(min)?;
    let max = duration_or_zero(max)?;
    if min > max {
        return Err(format!("retry backoff {s:?}: the minimum is larger than the maximum"));
    }
    Ok((min, max))
}

/// A retention time: a duration, or `infinite`.
pub(crate) fn retention(s: &str) -> Result<Retention, String> {
    if is_unlimited(s.trim()) {
        return Ok(Retention::Infinite);
    }
    duration(s).map(Retention::Time).map_err(|e| format!("{e}, or infinite"))
}

/// A byte size such as `1024`, `64KiB`, `10GiB` or `1.5MB` (KB/MB/GB are
/// powers of 1000, KiB/MiB/GiB powers of 1024).
pub(crate) fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("invalid size {s:?}; examples: 1024, 64KiB, 10GiB"))
}

/// A positive byte size.
pub(crate) fn positive_size(s: &str) -> Result<u64, String> {
    match size(s)? {
        0 => Err(format!("size {s:?} must be greater than zero")),
        n => Ok(n),
    }
}

/// A byte rate: a positive size per second, `10MiB` or `10MiB/s`.
pub(crate) fn rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    positive_size(t).map_err(|e| format!("{e} (a rate is bytes per second, e.g. 10MiB/s)"))
}

/// Retention by size: a positive size, or `infinite` (-1 on the wire).
pub(crate) fn retention_bytes(s: &str) -> Result<i64, String> {
    if is_unlimited(s.trim()) {
        return Ok(-1);
    }
    let n = positive_size(s).map_err(|e| format!("{e}, or infinite"))?;
    i64::try_from(n).map_err(|_| format!("size {s:?} is too large"))
}

/// `earliest`, `latest`, an offset (a plain integer), an RFC 3339 time
/// (`2026-11-21T10:00:00Z`) or Unix milliseconds written `@1700000000000`.
pub(crate) fn start_from(s: &str) -> Result<StartFrom, String> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "earliest" | "beginning" => return Ok(StartFrom::Earliest),
        "latest" | "end" => return Ok(StartFrom::Latest),
        _ => {}
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map(StartFrom::Offset).map_err(|_| format!("offset {s:?} is too large"));
    }
    if let Some(ms) = t.strip_prefix('@') {
        return ms
            .parse::<u64>()
            .ok()
            .and_then(|ms| i64::try_from(ms).ok())
            .map(StartFrom::Timestamp)
            .ok_or_else(|| format!("invalid Unix milliseconds {s:?}; example: @1700000000000"));
    }
    if t.contains(['-', ':', 'T']) {
        let time = humantime::parse_rfc3339_weak(t)
            .map_err(|e| format!("invalid time {s:?} ({e}); example: 2026-11-21T10:00:00Z"))?;
        let ms = time.duration_since(UNIX_EPOCH).map_err(|_| format!("time {s:?} is before 1970"))?.as_millis();
        return i64::try_from(ms).map(StartFrom::Timestamp).map_err(|_| format!("time {s:?} is too far in the future"));
    }
    Err(format!(
        "invalid start {s:?}; expected earliest, latest, an offset, an RFC 3339 time \
         (2026-11-21T10:00:00Z) or Unix milliseconds (@1700000000000)"
    ))
}

/// A message header `key=value`.
pub(crate) fn header(s: &str) -> Result<(String, Bytes), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), Bytes::copy_from_slice(v.as_bytes()))),
        _ => Err(format!("invalid header {s:?}; expected key=value")),
    }
}

/// A header `key=value` whose value is text (binding filters).
pub(crate) fn text_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("invalid header {s:?}; expected key=value")),
    }
}

/// Durability of a topic's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DurabilityArg {
    /// Acknowledge a write once it is on stable storage.
    Fsync,
    /// Acknowledge a write once it is in the page cache (a crash may lose it).
    None,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Self {
        match d {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::None => Durability::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(duration("7x").is_err());
        assert!(duration("").is_err());
        assert!(duration("0s").is_err());
        assert_eq!(retention("infinite"), Ok(Retention::Infinite));
        assert_eq!(retention("1h"), Ok(Retention::Time(Duration::from_secs(3600))));
        assert!(retention("soon").is_err());
    }

    #[test]
    fn queue_durations() {
        assert_eq!(ttl("forever"), Ok(Duration::ZERO));
        assert_eq!(ttl("0"), Ok(Duration::ZERO));
        assert_eq!(ttl("1h"), Ok(Duration::from_secs(3600)));
        assert!(ttl("-1s").is_err());
        assert!(ttl("later").is_err());
        assert_eq!(retry_backoff("1s..60s"), Ok((Duration::from_secs(1), Duration::from_secs(60))));
        assert_eq!(retry_backoff("0s..0s"), Ok((Duration::ZERO, Duration::ZERO)));
        assert_eq!(retry_backoff("500ms..2m"), Ok((Duration::from_millis(500), Duration::from_secs(120))));
        assert!(retry_backoff("60s..1s").unwrap_err().contains("minimum"));
        assert!(retry_backoff("1s").unwrap_err().contains("MIN..MAX"));
        assert!(retry_backoff("1s..").is_err());
        assert!(retry_backoff("a..b").is_err());
        assert!(duration_or_zero("-5s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(size("1024"), Ok(1024));
        assert_eq!(size("64MiB"), Ok(64 << 20));
        assert_eq!(size("10GiB"), Ok(10 << 30));
        assert_eq!(size("1KB"), Ok(1000));
        assert!(size("ten").is_err());
        assert!(size("10 parsecs").is_err());
        assert!(size("-5").is_err());
        assert!(positive_size("0").is_err());
        assert_eq!(retention_bytes("infinite"), Ok(-1));
        assert_eq!(retention_bytes("1GiB"), Ok(1 << 30));
        assert!(retention_bytes("0").is_err());
    }

    #[test]
    fn start_positions() {
        assert_eq!(start_from("earliest"), Ok(StartFrom::Earliest));
        assert_eq!(start_from("LATEST"), Ok(StartFrom::Latest));
        assert_eq!(start_from("42"), Ok(StartFrom::Offset(42)));
        assert_eq!(start_from("2023-11-14T22:13:20Z"), Ok(StartFrom::Timestamp(1_700_000_000_000)));
        assert_eq!(start_from("@1700000000000"), Ok(StartFrom::Timestamp(1_700_000_000_000)));
        assert!(start_from("yesterday").is_err());
        assert!(start_from("-3").is_err());
        assert!(start_from("2023-13-45T99:00:00Z").is_err());
        assert!(start_from("@soon").is_err());
        assert!(start_from("99999999999999999999999").is_err());
    }

    #[test]
    fn headers() {
        assert_eq!(header("a=b"), Ok(("a".into(), Bytes::from_static(b"b"))));
        assert_eq!(header("a=b=c"), Ok(("a".into(), Bytes::from_static(b"b=c"))));
        assert_eq!(header("a="), Ok(("a".into(), Bytes::new())));
        assert!(header("=b").is_err());
        assert!(header("ab").is_err());
        assert_eq!(text_header("region=eu"), Ok(("region".into(), "eu".into())));
        assert!(text_header("=eu").is_err());
        assert!(text_header("region").is_err());
    }
}

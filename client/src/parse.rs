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

    /// Asserts that `parse` reads each input of `cases` as its value.
    fn parses<T: std::fmt::Debug + PartialEq>(parse: impl Fn(&str) -> Result<T, String>, cases: &[(&str, T)]) {
        for (input, want) in cases {
            assert_eq!(parse(input).as_ref(), Ok(want), "{input:?}");
        }
    }

    /// Asserts that `parse` refuses each of `inputs`.
    fn refused<T: std::fmt::Debug>(parse: impl Fn(&str) -> Result<T, String>, inputs: &[&str]) {
        for input in inputs {
            assert!(parse(input).is_err(), "{input:?} was accepted: {:?}", parse(input));
        }
    }

    #[test]
    fn durations() {
        parses(duration, &[("7d", Duration::from_secs(7 * 86400)), ("500ms", Duration::from_millis(500))]);
        refused(duration, &["7x", "", "0s"]);
        parses(retention, &[("infinite", Retention::Infinite), ("1h", Retention::Time(Duration::from_secs(3600)))]);
        refused(retention, &["soon"]);
    }

    #[test]
    fn queue_durations() {
        parses(ttl, &[("forever", Duration::ZERO), ("0", Duration::ZERO), ("1h", Duration::from_secs(3600))]);
        refused(ttl, &["-1s", "later"]);
        parses(
            retry_backoff,
            &[
                ("1s..60s", (Duration::from_secs(1), Duration::from_secs(60))),
                ("0s..0s", (Duration::ZERO, Duration::ZERO)),
                ("500ms..2m", (Duration::from_millis(500), Duration::from_secs(120))),
            ],
        );
        assert!(retry_backoff("60s..1s").unwrap_err().contains("minimum"));
        assert!(retry_backoff("1s").unwrap_err().contains("MIN..MAX"));
        refused(retry_backoff, &["1s..", "a..b"]);
        refused(duration_or_zero, &["-5s"]);
    }

    #[test]
    fn sizes() {
        parses(size, &[("1024", 1024), ("64MiB", 64 << 20), ("10GiB", 10 << 30), ("1KB", 1000)]);
        refused(size, &["ten", "10 parsecs", "-5"]);
        refused(positive_size, &["0"]);
        parses(retention_bytes, &[("infinite", -1), ("1GiB", 1 << 30)]);
        refused(retention_bytes, &["0"]);
    }

    #[test]
    fn start_positions() {
        parses(
            start_from,
            &[
                ("earliest", StartFrom::Earliest),
                ("LATEST", StartFrom::Latest),
                ("42", StartFrom::Offset(42)),
                ("2023-11-14T22:13:20Z", StartFrom::Timestamp(1_700_000_000_000)),
                ("@1700000000000", StartFrom::Timestamp(1_700_000_000_000)),
            ],
        );
        refused(start_from, &["yesterday", "-3", "2023-13-45T99:00:00Z", "@soon", "99999999999999999999999"]);
    }

    #[test]
    fn headers() {
        parses(
            header,
            &[
                ("a=b", ("a".into(), Bytes::from_static(b"b"))),
                ("a=b=c", ("a".into(), Bytes::from_static(b"b=c"))),
                ("a=", ("a".into(), Bytes::new())),
            ],
        );
        refused(header, &["=b", "ab"]);
        parses(text_header, &[("region=eu", ("region".into(), "eu".into()))]);
        refused(text_header, &["=eu", "region"]);
    }
}

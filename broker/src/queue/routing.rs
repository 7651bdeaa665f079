//! Bindings: routing messages produced to a topic into a queue, filtered by
//! exact key, dot-separated key pattern (`*` one word, `#` zero or more),
//! header values, or nothing (fan-out).
//!
//! One router task per binding tails every partition of the topic from a
//! cursor (`bindings/<id>.cursor` in the queue's directory), enqueues the
//! matching records durably, then advances the cursor. A crash between the
//! two re-routes the records after the cursor: routing is at least once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_proto::batch::{BatchIter, Record};
use tokio::sync::watch;

use super::codec::MessageMeta;
use super::{NewMessage, QueueManager};
use crate::broker::Broker;
use crate::catalog::{BindingFilter, BindingRecord};
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::log::LogError;

/// Checks a filter before it is stored.
pub(crate) fn validate_filter(f: &BindingFilter) -> Result<(), BrokerError> {
    let bad = |m: String| Err(BrokerError::InvalidQueueConfig(m));
    if f.key.is_some() && f.pattern.is_some() {
        return bad("a binding filters by key or by pattern, not both".into());
    }
    if let Some(p) = &f.pattern {
        if p.is_empty() {
            return bad("binding pattern is empty".into());
        }
        for word in p.split('.') {
            if word.is_empty() {
                return bad(format!(
                    "invalid binding pattern {p:?}: empty word (two dots in a row, or a dot at an end)"
                ));
            }
            if word != "*" && word != "#" && (word.contains('*') || word.contains('#')) {
                return bad(format!("invalid binding pattern {p:?}: `*` and `#` must be whole words (got {word:?})"));
            }
        }
    }
    for k in f.headers.keys() {
        if k.is_empty() || k.starts_with(':') {
            return bad(format!("invalid header name {k:?} in binding filter"));
        }
    }
    Ok(())
}

/// Whether a dot-separated key matches a pattern of words, `*` and `#`.
pub(crate) fn pattern_matches(pattern: &str, key: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    // matches[i][j]: p[i..] matches k[j..]
    let mut next = vec![false; k.len() + 1];
    next[k.len()] = true;
    for i in (0..p.len()).rev() {
        let mut cur = vec![false; k.len() + 1];
        for j in (0..=k.len()).rev() {
            cur[j] = match p[i] {
                "#" => next[j] || (j < k.len() && cur[j + 1]),
                "*" => j < k.len() && next[j + 1],
                w => j < k.len() && k[j] == w && next[j + 1],
            };
        }
        next = cur;
    }
    next[0]
}

pub(crate) fn matches(f: &BindingFilter, r: &Record) -> bool {
    let key = r.key.as_deref().map(String::from_utf8_lossy);
    if let Some(want) = &f.key
        && key.as_deref() != Some(want.as_str())
    {
        return false;
    }
    if let Some(p) = &f.pattern {
        match &key {
            Some(k) if pattern_matches(p, k) => {}
            _ => return false,
        }
    }
    f.headers.iter().all(|(k, v)| r.header(k).is_some_and(|h| h.as_ref() == v.as_bytes()))
}

pub(crate) fn cursor_path(queue_dir: &Path, id: u64) -> PathBuf {
    queue_dir.join("bindings").join(format!("{id}.cursor"))
}

/// Writes a binding's per-partition cursor atomically and durably.
pub(crate) fn write_cursor(queue_dir: &Path, id: u64, offsets: &[u64]) -> std::io::Result<()> {
    let path = cursor_path(queue_dir, id);
    let dir = path.parent().expect("has a parent");
    std::fs::create_dir_all(dir)?;
    let text = offsets.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    crate::fsutil::replace(&crate::fs::RealFs, &path, text.as_bytes(), crate::fsutil::Sync::Durable)
}

fn read_cursor(queue_dir: &Path, id: u64) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(cursor_path(queue_dir, id)).ok()?;
    if text.trim().is_empty() {
        return Some(Vec::new());
    }
    text.trim().split(',').map(|s| s.parse().ok()).collect()
}

/// The router of one binding; runs until stopped or the topic or queue is gone.
pub(crate) async fn run(
    mgr: Arc<QueueManager>,
    tenant: String,
    queue: String,
    binding: BindingRecord,
    mut stop: watch::Receiver<bool>,
) {
    let broker: Arc<Broker> = mgr.broker().clone();
    let Ok(q) = mgr.queue(&tenant, &queue) else { return };
    let mut cursor = match read_cursor(&q.dir, binding.id) {
        Some(c) => c,
        None => {
            // Lost between the catalog commit and the cursor write: start at the end.
            let n = broker.partition_count(&tenant, &binding.topic).unwrap_or(0);
            (0..n)
                .filter_map(|p| broker.partition(&tenant, &binding.topic, p).ok())
                .map(|p| p.high_watermark())
                .collect()
        }
    };
    let label = format!("{tenant}/{queue} <- {}", binding.topic);
    loop {
        if *stop.borrow() || q.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let n = match broker.partition_count(&tenant, &binding.topic) {
            Ok(n) => n as usize,
            Err(_) => {
                tracing::info!(binding = %label, "topic is gone; binding router stops");
                return;
            }
        };
        // Partitions added after the binding start at their beginning.
        cursor.resize(n.max(cursor.len()), 0);
        let mut moved = false;
        let mut waits = Vec::new();
        #[allow(clippy::needless_range_loop)] // `p` is also the partition number
        for p in 0..n {
            let Ok(log) = broker.partition(&tenant, &binding.topic, p as u32) else { continue };
            let read = match log.read(cursor[p], 1 << 20).await {
                Ok(r) => r,
                Err(BrokerError::Log { source: LogError::OffsetOutOfRange { start, end, .. }, .. }) => {
                    // Retention removed records before we routed them, or the
                    // topic was recreated: continue from what exists.
                    cursor[p] = if cursor[p] < start { start } else { end };
                    moved = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(binding = %label, error = %e, "binding read failed");
                    continue;
                }
            };
            if read.records.is_empty() {
                let mut rx = log.log().subscribe();
                let from = cursor[p];
                waits.push(Box::pin(async move {
                    let _ = rx.wait_for(|h| *h > from).await;
                }));
                continue;
            }
            let mut batch = Vec::new();
            for b in BatchIter::new(read.records) {
                let Ok(b) = b else { break };
                let Ok(records) = b.records() else { break };
                for r in records.iter().filter(|r| r.offset >= cursor[p] && matches(&binding.filter, r)) {
                    batch.push(NewMessage {
                        key: r.key.clone(),
                        body: r.value.clone().unwrap_or_default(),
                        headers: r
                            .headers
                            .iter()
                            .filter(|h| !h.key.starts_with(':'))
                            .map(|h| (h.key.clone(), h.value.clone().unwrap_or_else(Bytes::new)))
                            .collect(),
                        meta: routed_meta(&q.lock().q, now_ms()),
                    });
                }
            }
            if !batch.is_empty() {
                // Enqueue in slices that stay under the batch limit.
                let mut failed = false;
                for chunk in batch.chunks(512) {
                    if let Err(e) = mgr.enqueue(&q, chunk.to_vec()).await {
                        tracing::warn!(binding = %label, error = %e, "routing into the queue failed; retrying");
                        failed = true;
                        break;
                    }
                }
                if failed {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => {}
                    }
                    moved = false;
                    break;
                }
            }
            cursor[p] = read.next_offset;
            moved = true;
        }
        if moved {
            if let Err(e) = write_cursor(&q.dir, binding.id, &cursor) {
                tracing::warn!(binding = %label, error = %e, "cannot save binding cursor");
            }
            continue;
        }
        // Nothing new anywhere: wait for data, a stop, or a periodic re-check
        // (new partitions, deleted topic).
        let any = futures::future::select_all(if waits.is_empty() {
            vec![Box::pin(std::future::pending::<()>())
                as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>]
        } else {
            waits.into_iter().map(|w| w as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>).collect()
        });
        tokio::select! {
            _ = any => {}
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Routed messages get the queue's default delay and TTL.
fn routed_meta(q: &super::state::QueueState, now: i64) -> MessageMeta {
    let s = q.settings();
    MessageMeta {
        not_before: if s.delay_ms > 0 { now + s.delay_ms } else { 0 },
        expires_at: if s.ttl_ms > 0 { now + s.ttl_ms } else { 0 },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_words() {
        let cases = [
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#.c", "c", true),
            ("#", "anything.at.all", true),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.x.y.c", true),
            ("a.#.c", "a.x.y.d", false),
            ("*", "a.b", false),
            ("*.*", "a.b", true),
            ("orders.eu", "orders.eu", true),
            ("orders.eu", "orders.us", false),
        ];
        for (p, k, want) in cases {
            assert_eq!(pattern_matches(p, k), want, "{p} vs {k}");
        }
    }

    #[test]
    fn invalid_filters_are_refused() {
        let with_pattern = |p: &str| BindingFilter { pattern: Some(p.into()), ..Default::default() };
        for bad in ["", "a..b", ".a", "a.", "a*.b", "a.b#"] {
            assert!(validate_filter(&with_pattern(bad)).is_err(), "{bad:?}");
        }
        validate_filter(&with_pattern("a.*.#")).unwrap();
        let both = BindingFilter { key: Some("k".into()), pattern: Some("k".into()), ..Default::default() };
        assert!(validate_filter(&both).is_err());
    }
}

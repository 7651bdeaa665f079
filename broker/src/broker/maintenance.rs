//! Maintenance: retention and age-based rolling on every partition, and
//! the cold-tier upload loop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Broker;
use crate::partition::Partition;
use crate::tier::TierError;

impl Broker {
    /// Runs retention and age-based rolling on every partition. `now_ms` is
    /// injected so tests control time.
    pub async fn run_maintenance(&self, now_ms: i64) {
        let partitions = self.all_partitions();
        // Total retention of the cold tier first (manifest, then objects).
        for p in &partitions {
            p.apply_remote_retention(now_ms).await;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for log in partitions {
                match log.maintain(now_ms) {
                    Ok(m) if !m.deleted_segments.is_empty() => {
                        tracing::info!(dir = %log.dir().display(), segments = ?m.deleted_segments, "retention deleted segments");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(dir = %log.dir().display(), error = %e, "maintenance failed"),
                }
            }
        })
        .await;
        // The stored-bytes quota follows retention from here.
        self.refresh_stored_usage();
    }

    /// Periodic maintenance until shutdown.
    pub async fn maintenance_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.storage.maintenance_interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.run_maintenance(self.now_ms()).await,
                _ = self.until_shutdown() => return,
            }
        }
    }

    /// Uploads sealed segments of tiered partitions until shutdown, at most
    /// `tier.upload_concurrency` partitions at a time, each partition's
    /// segments in order. A partition whose upload failed waits an
    /// exponentially growing delay (capped by `tier.max_retry_backoff`)
    /// before it is tried again, so an outage costs little and uploads
    /// catch up by themselves once the store is back. Also keeps the upload
    /// backlog that produce requests are checked against.
    pub async fn upload_loop(self: Arc<Self>) {
        use backon::BackoffBuilder;
        let Some(tier) = self.tier.clone() else { return };
        let mut tick = tokio::time::interval(tier.config.upload_interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut running: tokio::task::JoinSet<(PathBuf, Result<(), TierError>)> = tokio::task::JoinSet::new();
        let mut busy: std::collections::HashSet<PathBuf> = Default::default();
        let mut retry: HashMap<PathBuf, (tokio::time::Instant, backon::ExponentialBackoff)> = HashMap::new();
        // Replicated partitions this broker led at the last pass, and when
        // each followed one reads its manifest next.
        // (By term: leadership lost and regained between two passes means a
        // new term, so the manifest is read again.)
        let mut led: HashMap<PathBuf, u64> = HashMap::new();
        let mut followed: HashMap<PathBuf, tokio::time::Instant> = HashMap::new();
        let follow_every = (tier.config.upload_interval.0 * 10).max(Duration::from_millis(100));
        let backoff = || {
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(tier.config.max_retry_backoff.0)
                .with_jitter()
                .without_max_times()
                .build()
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(done) = running.join_next(), if !running.is_empty() => match done {
                    Ok((dir, Ok(()))) => {
                        busy.remove(&dir);
                        retry.remove(&dir);
                        tier.set_last_error(None);
                    }
                    Ok((dir, Err(e))) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cold-tier upload failed; will retry");
                        busy.remove(&dir);
                        // A new leader's manifest read may have failed: read it again.
                        led.remove(&dir);
                        tier.set_last_error(Some(e.to_string()));
                        let entry = retry.entry(dir).or_insert_with(|| (tokio::time::Instant::now(), backoff()));
                        let delay = entry.1.next().unwrap_or(tier.config.max_retry_backoff.0);
                        entry.0 = tokio::time::Instant::now() + delay;
                    }
                    Err(e) => {
                        // Which partition is unknown; the per-partition writer
                        // lock keeps a second upload of it safe.
                        tracing::error!(error = %e, "upload task failed");
                        busy.clear();
                        led.clear();
                    }
                },
                _ = self.until_shutdown() => return,
            }
            // A replicated partition is uploaded by its leader only. A
            // replica that just became leader reads the manifest again
            // first (the previous leader published since); followers read
            // it every so often to learn how far the tier reaches, so that
            // their local retention frees what it holds.
            let tiered: Vec<Arc<Partition>> =
                self.all_partitions().into_iter().filter(|p| p.config().tiered && p.remote().is_some()).collect();
            let now = tokio::time::Instant::now();
            let mut logs = Vec::new();
            for p in tiered {
                match self.replica_group(&p) {
                    None => logs.push((p, None)),
                    Some(g) if g.is_leader() => {
                        let term = g.term();
                        let fresh = led.get(p.dir()) != Some(&term);
                        logs.push((p, Some((g, term, fresh))));
                    }
                    Some(_) => {
                        let dir = p.dir().to_path_buf();
                        led.remove(&dir);
                        if busy.contains(&dir) || followed.get(&dir).is_some_and(|at| *at > now) {
                            continue;
                        }
                        followed.insert(dir.clone(), now + follow_every);
                        busy.insert(dir.clone());
                        let clock = self.clock.clone();
                        running.spawn(async move {
                            let result = p.follow_tier(clock.as_ref()).await;
                            (dir, result)
                        });
                    }
                }
            }
            tier.set_backlog(logs.iter().map(|(l, _)| l.pending_upload_bytes()).sum());
            for (log, leader) in logs {
                if running.len() >= tier.config.upload_concurrency as usize {
                    break;
                }
                let dir = log.dir().to_path_buf();
                if busy.contains(&dir) || retry.get(&dir).is_some_and(|(at, _)| *at > now) {
                    continue;
                }
                let reload = leader.as_ref().is_some_and(|(_, _, fresh)| *fresh);
                if !reload && !log.has_upload_pending() {
                    continue;
                }
                busy.insert(dir.clone());
                if let Some((_, term, true)) = &leader {
                    led.insert(dir.clone(), *term);
                }
                let limits = tier.limits();
                let metrics = self.metrics.clone();
                let clock = self.clock.clone();
                let group = leader.map(|(g, term, _)| (g, term));
                running.spawn(async move {
                    // Only while it leads in the term whose manifest it read.
                    let may_upload = move || group.as_ref().is_none_or(|(g, term)| g.is_leader() && g.term() == *term);
                    let result = async {
                        if reload {
                            log.reload_tier().await?;
                        }
                        log.upload_pending(limits, &metrics, clock.as_ref(), &may_upload).await
                    }
                    .await;
                    (dir, result)
                });
            }
        }
    }
}

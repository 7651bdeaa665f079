//! Dead letters and redrive: a message that ran out of deliveries (or
//! expired with `ttl_action = dead_letter`) is made durable in the DLQ before
//! it is finished in its source queue; redrive moves DLQ messages back with
//! the dead-letter headers stripped.

use super::delivery::{read_records, user_headers};
use super::*;

impl QueueManager {
    /// Copies messages to the dead-letter queue (durably), then finishes them here.
    pub(super) async fn dead_letter(&self, q: &Arc<Queue>, items: Vec<state::DeadLetter>) {
        let dlq_name = q.lock().q.settings().dead_letter_queue.clone();
        let now = self.broker.now_ms();
        let result: Result<(), BrokerError> = async {
            let dlq_name = dlq_name.ok_or_else(|| BrokerError::InvalidQueueConfig("no dead-letter queue".into()))?;
            let dlq = self.queue(&q.tenant, &dlq_name)?;
            let ids: Vec<u64> = items.iter().map(|d| d.id).collect();
            let records = read_records(q, &ids).await?;
            let mut batch = Vec::with_capacity(items.len());
            for d in &items {
                let Some(r) = records.get(&d.id) else { continue };
                let mut meta = MessageMeta::of(r);
                meta.not_before = 0;
                meta.expires_at = 0;
                meta.dedup_id.clear();
                if strata_telemetry::enabled() {
                    use strata_telemetry::{Attribute, attr};
                    let reason = Attribute::new(attr::DEAD_LETTER_REASON, d.reason.clone());
                    crate::telemetry::stored_message_event(r, "dead_letter", &q.name, d.id, d.deliveries, Some(reason));
                }
                let mut headers = user_headers(r);
                headers.retain(|(k, _)| {
                    !k.starts_with("x-strata-dead-letter-") && !k.starts_with("x-strata-original-") && k != H_DELIVERIES
                });
                headers.push((H_REASON.into(), Bytes::from(d.reason.clone())));
                headers.push((H_SOURCE.into(), Bytes::from(q.name.clone())));
                headers.push((H_ORIGINAL_ID.into(), Bytes::from(d.id.to_string())));
                headers.push((H_DELIVERIES.into(), Bytes::from(d.deliveries.to_string())));
                headers.push((H_ENQUEUED.into(), Bytes::from(r.timestamp_ms.to_string())));
                batch.push(NewMessage { key: r.key.clone(), body: r.value.clone().unwrap_or_default(), headers, meta });
            }
            Box::pin(self.enqueue(&dlq, batch)).await?;
            let mut inner = q.lock();
            let mut entry = JournalEntry::default();
            let mut woke = false;
            for d in &items {
                woke |= inner.q.finish(d.id, Finish::DeadLettered, now);
                entry.dead_lettered.push(d.id);
            }
            q.journal(&mut inner, &entry)?;
            drop(inner);
            q.wake(woke);
            let labels = crate::metrics::Metrics::queue(&q.tenant, &q.name);
            q.metrics.queue_dead_lettered.get_or_create(&labels).inc_by(items.len() as u64);
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(queue = %q.label(), error = %e, "dead-lettering failed; retrying in 5 s");
            let mut inner = q.lock();
            for d in &items {
                inner.q.dead_letter_failed(d.id, 5000, now);
            }
            drop(inner);
            q.changed.notify_one();
        }
    }

    /// Moves messages of a dead-letter queue back to their source queues.
    pub async fn redrive(self: &Arc<Self>, tenant: &str, dlq: &str, max: u64) -> Result<u64, BrokerError> {
        let q = self.queue(tenant, dlq)?;
        let mut moved = 0u64;
        let mut stuck: Vec<Receipt> = Vec::new();
        let limit = if max == 0 { u64::MAX } else { max };
        while moved < limit {
            let want = (limit - moved).min(500) as usize;
            let got = self.receive(&q.tenant, &q.name, want, Duration::ZERO, Some(300_000), false).await?;
            if got.is_empty() {
                break;
            }
            let mut by_source: HashMap<String, (Vec<NewMessage>, Vec<Receipt>)> = HashMap::new();
            for m in got {
                let receipt = m.receipt.expect("received messages carry receipts");
                let source = m
                    .headers
                    .iter()
                    .find(|h| h.key == H_SOURCE)
                    .map(|h| String::from_utf8_lossy(&h.value).into_owned());
                match source.filter(|s| self.queue(&q.tenant, s).is_ok()) {
                    Some(s) => {
                        let headers = m
                            .headers
                            .into_iter()
                            .filter(|h| {
                                !h.key.starts_with("x-strata-dead-letter-")
                                    && !h.key.starts_with("x-strata-original-")
                                    && h.key != H_DELIVERIES
                            })
                            .map(|h| (h.key, h.value))
                            .collect();
                        let meta = MessageMeta {
                            priority: m.priority,
                            group: m.group,
                            reply_to: m.reply_to,
                            correlation_id: m.correlation_id,
                            ..Default::default()
                        };
                        let key = if m.key.is_empty() { None } else { Some(m.key) };
                        let e = by_source.entry(s).or_default();
                        e.0.push(NewMessage { key, body: m.body, headers, meta });
                        e.1.push(receipt);
                    }
                    None => stuck.push(receipt),
                }
            }
            if by_source.is_empty() {
                break;
            }
            for (source, (batch, receipts)) in by_source {
                let target = self.queue(&q.tenant, &source)?;
                let n = batch.len() as u64;
                self.enqueue(&target, batch).await?;
                self.ack(&q.tenant, &q.name, &receipts).await?;
                moved += n;
            }
        }
        if !stuck.is_empty() {
            self.nack(&q.tenant, &q.name, &stuck, Some(0)).await?;
        }
        Ok(moved)
    }

    // ---- temporary reply queues -----------------------------------------
}

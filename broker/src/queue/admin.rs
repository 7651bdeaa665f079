//! Queue administration: settings, create/update/describe/list/delete,
//! purge, bindings to topics (and their routers), temporary reply queues.

use super::*;

impl QueueManager {
    pub(super) fn defaults(&self) -> QueueSettings {
        QueueSettings::defaults(self.broker.config().topic_defaults.durability)
    }

    pub(super) fn resolve(base: &QueueSettings, o: &QueueOverrides) -> Result<QueueSettings, BrokerError> {
        let dead_letter_queue = match &o.dead_letter_queue {
            None => base.dead_letter_queue.clone(),
            Some(q) if q.is_empty() => None,
            Some(q) => Some(parse_queue_name(q)?),
        };
        let max_deliveries = match (o.max_deliveries, &dead_letter_queue, &base.dead_letter_queue) {
            (Some(m), _, _) => m,
            // A dead-letter queue without a limit would never be used: SQS's usual 5.
            (None, Some(_), None) if base.max_deliveries == 0 => 5,
            (None, _, _) => base.max_deliveries,
        };
        let s = QueueSettings {
            visibility_timeout_ms: o.visibility_timeout_ms.unwrap_or(base.visibility_timeout_ms),
            max_deliveries,
            dead_letter_queue,
            retry_backoff_min_ms: o.retry_backoff_min_ms.unwrap_or(base.retry_backoff_min_ms),
            retry_backoff_max_ms: o.retry_backoff_max_ms.unwrap_or(base.retry_backoff_max_ms),
            delay_ms: o.delay_ms.unwrap_or(base.delay_ms),
            ttl_ms: o.ttl_ms.unwrap_or(base.ttl_ms),
            ttl_action: o.ttl_action.unwrap_or(base.ttl_action),
            fifo: o.fifo.unwrap_or(base.fifo),
            dedup_window_ms: o.dedup_window_ms.unwrap_or(base.dedup_window_ms),
            priorities: o.priorities.unwrap_or(base.priorities),
            durability: o.durability.unwrap_or(base.durability),
        };
        let bad = |m: String| Err(BrokerError::InvalidQueueConfig(m));
        if !(1..=MAX_VISIBILITY_MS).contains(&s.visibility_timeout_ms) {
            return bad(format!(
                "visibility_timeout_ms must be between 1 and {MAX_VISIBILITY_MS} (12 h), got {}",
                s.visibility_timeout_ms
            ));
        }
        for (field, v) in [
            ("retry_backoff_min_ms", s.retry_backoff_min_ms),
            ("retry_backoff_max_ms", s.retry_backoff_max_ms),
            ("delay_ms", s.delay_ms),
            ("ttl_ms", s.ttl_ms),
            ("dedup_window_ms", s.dedup_window_ms),
        ] {
            check_duration(field, v)?;
        }
        if s.retry_backoff_max_ms < s.retry_backoff_min_ms {
            return bad(format!(
                "retry_backoff_max_ms ({}) must be at least retry_backoff_min_ms ({})",
                s.retry_backoff_max_ms, s.retry_backoff_min_ms
            ));
        }
        if !(1..=MAX_PRIORITIES).contains(&s.priorities) {
            return bad(format!("priorities must be between 1 and {MAX_PRIORITIES}, got {}", s.priorities));
        }
        if s.fifo && s.priorities > 1 {
            return bad("a FIFO queue keeps order per group and cannot also have priorities".into());
        }
        if s.ttl_action == TtlAction::DeadLetter && s.dead_letter_queue.is_none() {
            return bad("ttl_action dead_letter needs a dead_letter_queue".into());
        }
        Ok(s)
    }

    pub async fn create_queue(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        overrides: QueueOverrides,
        if_not_exists: bool,
    ) -> Result<QueueView, BrokerError> {
        let tenant = TenantName::resolve(tenant)?;
        let name = parse_queue_name(name)?;
        let settings = Self::resolve(&self.defaults(), &overrides)?;
        self.create(tenant.as_str(), &name, settings, false, if_not_exists).await
    }

    pub(super) async fn create(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        settings: QueueSettings,
        temporary: bool,
        if_not_exists: bool,
    ) -> Result<QueueView, BrokerError> {
        let _admin = self.admin.lock().await;
        let cmd = CatalogCommand::CreateQueue {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            settings,
            temporary,
            at_ms: self.broker.now_ms(),
            owner: self.broker.cluster().map(|c| c.id()),
        };
        match self.broker.commit_catalog(&cmd).await {
            Ok(Applied::Queue { .. }) => {}
            Ok(other) => return Err(BrokerError::Internal(format!("CreateQueue committed as {other:?}"))),
            Err(BrokerError::Catalog(crate::catalog::CatalogError::QueueExists { .. })) if if_not_exists => {
                drop(_admin);
                return self.describe_queue(tenant, name);
            }
            Err(e) => return Err(e),
        }
        let catalog = self.broker.catalog_snapshot().await;
        let record = catalog.tenants[tenant].queues[name].clone();
        let q = match self.open_queue(tenant, name, &record).await {
            Ok(q) => q,
            Err(e) => {
                // All or nothing, as for topics: a refused create (out of
                // file descriptors, disk full) leaves no queue behind.
                let _spare = self.broker.release_spare_fds();
                let undo = CatalogCommand::DeleteQueue { tenant: tenant.to_owned(), name: name.to_owned() };
                if let Err(undo) = self.broker.commit_catalog(&undo).await {
                    tracing::error!(queue = %format!("{tenant}/{name}"), error = %undo, "cannot undo a failed queue creation");
                }
                let dir = queue_dir(&self.broker.config().storage.data_dir, tenant, name, record.id);
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                tracing::warn!(queue = %format!("{tenant}/{name}"), error = %e, "queue creation failed and was undone");
                return Err(e);
            }
        };
        write_lock(&self.queues).insert((tenant.to_owned(), name.to_owned()), q.clone());
        tokio::spawn(self.clone().run_timer(q));
        drop(_admin);
        self.describe_queue(tenant, name)
    }

    pub async fn update_queue(
        &self,
        tenant: &str,
        name: &str,
        overrides: QueueOverrides,
    ) -> Result<QueueView, BrokerError> {
        let q = self.queue(tenant, name)?;
        let _admin = self.admin.lock().await;
        let current = q.lock().q.settings().clone();
        let settings = Self::resolve(&current, &overrides)?;
        self.broker
            .commit_catalog(&CatalogCommand::UpdateQueue {
                tenant: q.tenant.clone(),
                name: q.name.clone(),
                settings: settings.clone(),
            })
            .await?;
        let (segment_bytes, interval) =
            (self.broker.config().topic_defaults.segment_bytes.0, self.broker.config().storage.index_interval_bytes.0);
        q.messages.set_config(log_config(settings.durability, segment_bytes, interval));
        q.journal.set_config(log_config(settings.durability, segment_bytes, interval));
        q.lock().q.set_settings(settings);
        q.wake(true);
        drop(_admin);
        self.describe_queue(&q.tenant, &q.name)
    }

    pub fn describe_queue(&self, tenant: &str, name: &str) -> Result<QueueView, BrokerError> {
        let q = self.queue(tenant, name)?;
        Ok(self.view(&q, Vec::new()))
    }

    pub(super) fn view(&self, q: &Queue, bindings: Vec<crate::catalog::BindingRecord>) -> QueueView {
        let inner = q.lock();
        QueueView {
            tenant: q.tenant.clone(),
            name: q.name.clone(),
            id: q.id,
            settings: inner.q.settings().clone(),
            created_at_ms: q.created_at_ms,
            stats: inner.q.stats(self.broker.now_ms()),
            bindings,
            temporary: q.temporary,
        }
    }

    /// Describe with the bindings (which live in the catalog).
    pub async fn describe_queue_full(&self, tenant: &str, name: &str) -> Result<QueueView, BrokerError> {
        let q = self.queue(tenant, name)?;
        let catalog = self.broker.catalog_snapshot().await;
        let bindings = catalog
            .tenants
            .get(&q.tenant)
            .and_then(|t| t.queues.get(&q.name))
            .map(|r| r.bindings.clone())
            .unwrap_or_default();
        Ok(self.view(&q, bindings))
    }

    pub async fn list_queues(&self, tenant: &str) -> Result<Vec<QueueView>, BrokerError> {
        let tenant = TenantName::resolve(tenant)?;
        let catalog = self.broker.catalog_snapshot().await;
        let t = catalog
            .tenants
            .get(tenant.as_str())
            .ok_or_else(|| crate::catalog::CatalogError::UnknownTenant(tenant.to_string()))?;
        let mut out = Vec::new();
        for (name, record) in &t.queues {
            if let Ok(q) = self.queue(tenant.as_str(), name) {
                out.push(self.view(&q, record.bindings.clone()));
            }
        }
        Ok(out)
    }

    pub async fn delete_queue(&self, tenant: &str, name: &str, if_empty: bool) -> Result<(), BrokerError> {
        let q = self.queue(tenant, name)?;
        let _admin = self.admin.lock().await;
        if if_empty {
            let n = q.lock().q.len() as u64;
            if n > 0 {
                return Err(BrokerError::QueueNotEmpty { queue: q.label(), messages: n });
            }
        }
        let catalog = self.broker.catalog_snapshot().await;
        let bindings: Vec<u64> = catalog
            .tenants
            .get(&q.tenant)
            .and_then(|t| t.queues.get(&q.name))
            .map(|r| r.bindings.iter().map(|b| b.id).collect())
            .unwrap_or_default();
        self.broker
            .commit_catalog(&CatalogCommand::DeleteQueue { tenant: q.tenant.clone(), name: q.name.clone() })
            .await?;
        write_lock(&self.queues).remove(&(q.tenant.clone(), q.name.clone()));
        for id in bindings {
            self.stop_router(id);
        }
        self.close_queue(&q);
        let dir = q.dir.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        Ok(())
    }

    pub(super) fn close_queue(&self, q: &Queue) {
        q.closed.store(true, Ordering::Release);
        q.messages.close();
        q.journal.close();
        q.visible.notify_waiters();
        q.changed.notify_one();
    }

    /// Removes every message of the queue.
    pub async fn purge(&self, tenant: &str, name: &str) -> Result<u64, BrokerError> {
        let q = self.queue(tenant, name)?;
        let end = {
            let mut inner = q.lock();
            let n = inner.q.purge();
            q.recent().clear();
            let below = q.messages.end_offset();
            let end = q.journal(&mut inner, &JournalEntry { purged_below: below, ..Default::default() })?;
            (n, end)
        };
        self.wait_journal(&q, end.1).await?;
        Ok(end.0)
    }

    pub async fn bind(
        self: &Arc<Self>,
        tenant: &str,
        queue: &str,
        topic: &str,
        filter: BindingFilter,
    ) -> Result<crate::catalog::BindingRecord, BrokerError> {
        let q = self.queue(tenant, queue)?;
        let topic = crate::names::TopicName::parse(topic)?.to_string();
        validate_filter(&filter)?;
        let _admin = self.admin.lock().await;
        // New bindings route what is produced from now on (RabbitMQ's
        // semantics): the cursor starts at each partition's end.
        let n = self.broker.partition_count(&q.tenant, &topic)?;
        let mut start = Vec::with_capacity(n as usize);
        for p in 0..n {
            start.push(self.broker.partition(&q.tenant, &topic, p)?.high_watermark());
        }
        let cmd = CatalogCommand::Bind {
            tenant: q.tenant.clone(),
            queue: q.name.clone(),
            topic: topic.clone(),
            filter: filter.clone(),
            at_ms: self.broker.now_ms(),
        };
        let Applied::Binding { id } = self.broker.commit_catalog(&cmd).await? else {
            return Err(BrokerError::InvalidRequest("unexpected catalog result".into()));
        };
        let record = crate::catalog::BindingRecord { id, topic, filter, created_at_ms: self.broker.now_ms() };
        routing::write_cursor(&q.dir, id, &start)
            .map_err(|e| q.log_error(LogError::Io { path: q.dir.clone(), source: e }))?;
        self.start_router(&q.tenant, &q.name, record.clone());
        Ok(record)
    }

    pub async fn unbind(
        &self,
        tenant: &str,
        queue: &str,
        topic: &str,
        filter: BindingFilter,
    ) -> Result<(), BrokerError> {
        let q = self.queue(tenant, queue)?;
        let topic = crate::names::TopicName::parse(topic)?.to_string();
        let _admin = self.admin.lock().await;
        let cmd = CatalogCommand::Unbind { tenant: q.tenant.clone(), queue: q.name.clone(), topic, filter };
        if let Applied::Unbound { id } = self.broker.commit_catalog(&cmd).await? {
            self.stop_router(id);
            let _ = std::fs::remove_file(routing::cursor_path(&q.dir, id));
        }
        Ok(())
    }

    pub(super) fn start_router(self: &Arc<Self>, tenant: &str, queue: &str, binding: crate::catalog::BindingRecord) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        lock(&self.routers).insert(binding.id, stop);
        tokio::spawn(routing::run(self.clone(), tenant.to_owned(), queue.to_owned(), binding, stopped));
    }

    pub(super) fn stop_router(&self, id: u64) {
        if let Some(stop) = lock(&self.routers).remove(&id) {
            stop.send_replace(true);
        }
    }

    /// Creates a temporary queue for request-reply; the caller deletes it
    /// (with [`QueueManager::delete_queue`]) when its stream ends.
    pub async fn create_reply_queue(self: &Arc<Self>, tenant: &str) -> Result<String, BrokerError> {
        let tenant = TenantName::resolve(tenant)?;
        let name = format!("{}{:016x}", super::REPLY_PREFIX, rand_u64());
        let mut settings = self.defaults();
        // Replies are answered to a live caller: no need to fsync them.
        settings.durability = Durability::None;
        self.create(tenant.as_str(), &name, settings, true, false).await?;
        Ok(name)
    }

    // ---- time, snapshots, shutdown ----------------------------------------
}

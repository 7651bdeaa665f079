//! The cold store: one `Arc<dyn ObjectStore>` chosen by URL (`s3://`,
//! `gs://`, `az://`, `file://`, `memory://`), the start-up probe that proves
//! it usable, and making `file://` objects durable.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::limit::LimitStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use super::TierError;
use crate::config::TierConfig;

/// Requests in flight to the store at once (uploads, reads, listings): the
/// store's own concurrency bound on top of `tier.upload_concurrency`.
const MAX_STORE_REQUESTS: usize = 64;

/// The object store of the cold tier.
#[derive(Debug)]
pub(crate) struct ColdStore {
    pub store: Arc<dyn ObjectStore>,
    /// The same store, for segment and manifest uploads (with injected
    /// latency when `tier.inject_put_latency` is set).
    pub upload_store: Arc<dyn ObjectStore>,
    /// The URL as configured, for messages (never holds credentials: those
    /// come from the environment or the config file).
    pub url: String,
    /// The root directory of a `file://` store: objects are fsynced there,
    /// because `LocalFileSystem` only renames them into place.
    local_root: Option<PathBuf>,
}

impl ColdStore {
    /// Builds the store for `url`. Does no I/O except creating the root
    /// directory of a `file://` store; [`ColdStore::probe`] checks access.
    pub fn open(url: &str, cfg: &TierConfig) -> Result<ColdStore, TierError> {
        let bad = |reason: String| TierError::InvalidUrl { url: url.to_owned(), reason };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let prefix = parsed.path().trim_matches('/').to_owned();
        let bucket = || {
            parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| bad("the URL names no bucket (write scheme://bucket/prefix)".into()))
        };
        let client = ClientOptions::new()
            .with_timeout(cfg.request_timeout.0)
            .with_connect_timeout(cfg.connect_timeout.0)
            .with_allow_http(cfg.s3.allow_http);
        // The store's own retries are short; the uploader retries with its
        // own backoff for as long as it takes.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: cfg.request_timeout.0,
        };
        let mut local_root = None;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match parsed.scheme() {
            "memory" => (Arc::new(InMemory::new()), prefix),
            "file" => {
                let path = parsed.to_file_path().map_err(|()| bad("not an absolute file path".into()))?;
                std::fs::create_dir_all(&path)
                    .map_err(|e| bad(format!("cannot create directory {}: {e}", path.display())))?;
                let fs = LocalFileSystem::new_with_prefix(&path).map_err(|e| bad(e.to_string()))?;
                local_root = Some(path);
                (Arc::new(fs), String::new())
            }
            "s3" | "s3a" => {
                let s3 = &cfg.s3;
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket()?)
                    .with_client_options(client)
                    .with_retry(retry)
                    .with_allow_http(s3.allow_http)
                    .with_virtual_hosted_style_request(s3.virtual_hosted_style);
                let set = |v: &str| (!v.is_empty()).then(|| v.to_owned());
                if let Some(v) = set(&s3.endpoint) {
                    b = b.with_endpoint(v);
                }
                if let Some(v) = set(&s3.region) {
                    b = b.with_region(v);
                }
                if let Some(v) = set(&s3.access_key_id) {
                    b = b.with_access_key_id(v);
                }
                if let Some(v) = set(&s3.secret_access_key) {
                    b = b.with_secret_access_key(v);
                }
                if let Some(v) = set(&s3.session_token) {
                    b = b.with_token(v);
                }
                (Arc::new(b.build().map_err(|e| bad(one_line(&e)))?), prefix)
            }
            "gs" => {
                let b = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket()?)
                    .with_client_options(client)
                    .with_retry(retry);
                (Arc::new(b.build().map_err(|e| bad(one_line(&e)))?), prefix)
            }
            "az" | "azure" => {
                let b = MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket()?)
                    .with_client_options(client)
                    .with_retry(retry);
                (Arc::new(b.build().map_err(|e| bad(one_line(&e)))?), prefix)
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?} (use s3://, gs://, az://, file://, memory:// or none)"
                )));
            }
        };
        let store: Arc<dyn ObjectStore> =
            if prefix.is_empty() { store } else { Arc::new(PrefixStore::new(store, prefix.as_str())) };
        let store: Arc<dyn ObjectStore> = Arc::new(LimitStore::new(store, MAX_STORE_REQUESTS));
        // Fault injection wraps only the upload path: ThrottledStore cannot
        // serve reads of a `file://` store (it does not stream file payloads).
        let upload_store: Arc<dyn ObjectStore> = if cfg.inject_put_latency.0.is_zero() {
            store.clone()
        } else {
            let throttle = ThrottleConfig { wait_put_per_call: cfg.inject_put_latency.0, ..Default::default() };
            Arc::new(ThrottledStore::new(store.clone(), throttle))
        };
        Ok(ColdStore { store, upload_store, url: url.to_owned(), local_root })
    }

    /// Proves the store usable before the broker serves: writes, reads back
    /// and deletes a small object. Bad credentials, a missing bucket or an
    /// unreachable endpoint fail here, with the store's reason.
    pub async fn probe(&self) -> Result<(), TierError> {
        let key = Path::from(format!(".strata-probe/{}-{}", std::process::id(), crate::clock::now_ms()));
        let payload = Bytes::from_static(b"strata cold-tier probe");
        let fail = |e: object_store::Error| TierError::Unusable { url: self.url.clone(), reason: one_line(&e) };
        self.store.put(&key, PutPayload::from(payload.clone())).await.map_err(fail)?;
        // Range reads only: they are what the read path uses (and the
        // fault-injecting ThrottledStore cannot stream a whole `file://` get).
        let back = self.store.get_range(&key, 0..payload.len() as u64).await.map_err(fail)?;
        if back != payload {
            return Err(TierError::Unusable {
                url: self.url.clone(),
                reason: "the probe object read back differs from what was written".into(),
            });
        }
        self.store.delete(&key).await.map_err(fail)?;
        Ok(())
    }

    /// Makes a freshly written object durable. Object stores acknowledge a
    /// put once it is durable; `file://` needs an fsync of the file and its
    /// directory (the store renames a temporary file into place).
    pub async fn make_durable(&self, key: &Path) -> Result<(), TierError> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let path = key.parts().fold(root.clone(), |p, part| p.join(part.as_ref()));
        let p = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&p)?.sync_all()?;
            if let Some(dir) = p.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| TierError::Local { path: path.clone(), source: std::io::Error::other(e) })?
        .map_err(|source| TierError::Local { path, source })
    }
}

/// An object-store error on one line (their messages nest sources with newlines).
pub(crate) fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

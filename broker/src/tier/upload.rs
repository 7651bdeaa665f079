//! Uploading one sealed segment: its `.index` and `.log` objects (the log in
//! parts when large), then a manifest naming it.
//!
//! Idempotent: object keys are deterministic (`<base:020>.log`), so an upload
//! repeated after a crash or an error overwrites the same objects with the
//! same bytes, and the manifest names a segment only once.

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

use super::manifest::{Manifest, RemoteSegment, index_key, log_key};
use super::remote::RemotePartition;
use super::{TierError, store_error};
use crate::log::index::decode_index;
use crate::log::segment::SealedSegment;

/// Size limits of one upload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UploadLimits {
    /// Larger segments go up in parts.
    pub multipart_threshold: u64,
    pub part_bytes: u64,
    /// Parts in flight per multipart upload.
    pub part_concurrency: usize,
}

/// Uploads `seg` and publishes a manifest naming it. Returns false when the
/// segment is already in the manifest, or its files were deleted meanwhile
/// (total retention expired it before it was uploaded).
pub(crate) async fn upload_segment(
    remote: &RemotePartition,
    seg: &SealedSegment,
    limits: UploadLimits,
    now_ms: i64,
) -> Result<bool, TierError> {
    let _w = remote.writer.lock().await;
    let current = remote.manifest();
    if seg.base_offset < current.end() {
        return Ok(false);
    }
    if !current.segments.is_empty() && seg.base_offset > current.end() {
        // Publishing it would leave offsets end..base nowhere (a manifest
        // that went back, e.g. published late by a replica that no longer
        // led): refuse, loudly, rather than lose them.
        return Err(TierError::Manifest {
            key: super::manifest::manifest_key(&remote.prefix).to_string(),
            reason: format!(
                "the tier ends at offset {} but the next local segment starts at {}: uploading it would leave a gap",
                current.end(),
                seg.base_offset
            ),
        });
    }
    let index_path = seg.index_path();
    let index_bytes = match tokio::fs::read(&index_path).await {
        Ok(b) => Bytes::from(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(TierError::Local { path: index_path, source }),
    };
    match decode_index(&index_bytes) {
        Some((h, _)) if h.base_offset == seg.base_offset && h.log_size == seg.size => {}
        _ => {
            return Err(TierError::Local {
                path: index_path,
                source: std::io::Error::other("index does not match its segment"),
            });
        }
    }
    let store = &remote.store;
    let ikey = index_key(&remote.prefix, seg.base_offset);
    store.upload_store.put(&ikey, PutPayload::from(index_bytes.clone())).await.map_err(|e| store_error(&ikey, e))?;
    store.make_durable(&ikey).await?;

    let lkey = log_key(&remote.prefix, seg.base_offset);
    let log_path = seg.log_path();
    let local = |source: std::io::Error| TierError::Local { path: log_path.clone(), source };
    let mut file = match tokio::fs::File::open(&log_path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(local(e)),
    };
    if seg.size <= limits.multipart_threshold {
        let mut buf = vec![0u8; seg.size as usize];
        file.read_exact(&mut buf).await.map_err(local)?;
        store.upload_store.put(&lkey, PutPayload::from(buf)).await.map_err(|e| store_error(&lkey, e))?;
    } else {
        // Memory stays at about part_bytes × part_concurrency per upload.
        let upload = store.upload_store.put_multipart(&lkey).await.map_err(|e| store_error(&lkey, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, limits.part_bytes as usize);
        let mut remaining = seg.size;
        let mut chunk = vec![0u8; limits.part_bytes as usize];
        let result: Result<(), TierError> = async {
            while remaining > 0 {
                let n = remaining.min(limits.part_bytes) as usize;
                file.read_exact(&mut chunk[..n]).await.map_err(local)?;
                writer.wait_for_capacity(limits.part_concurrency).await.map_err(|e| store_error(&lkey, e))?;
                writer.write(&chunk[..n]);
                remaining -= n as u64;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer.finish().await.map_err(|e| store_error(&lkey, e))?;
    }
    store.make_durable(&lkey).await?;

    let mut next = Manifest { segments: current.segments.clone(), ..Manifest::empty() };
    next.segments.push(RemoteSegment {
        base_offset: seg.base_offset,
        next_offset: seg.next_offset,
        log_size: seg.size,
        index_size: index_bytes.len() as u64,
        max_timestamp: seg.max_timestamp,
        uploaded_at_ms: now_ms,
    });
    remote.publish(next).await?;
    Ok(true)
}

//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator
//! replicas never reconcile at once. The decision is a pure function of the
//! lease and the clock ([`decide`]); [`LeaseLock`] applies it with optimistic
//! concurrency (`resourceVersion`), so two candidates racing for an expired
//! lease cannot both win: the loser's update fails with 409.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

use crate::error::Error;

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's identity: [`identity`] (hostname, `_`, a random id).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (and candidates retry).
    pub renew_every: Duration,
}

/// A candidate's identity, as client-go makes it: the hostname (the pod
/// name), `_`, and a random id. A restarted pod (same name) is therefore a
/// new candidate that waits for its predecessor's lease to expire instead of
/// "renewing" a lease it never held in this life.
pub fn identity(hostname: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness, per instance.
    let mut id = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        id.push_str(&format!("{:016x}", h.finish()));
    }
    format!("{hostname}_{id}")
}

/// What a candidate does with the lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it.
    TakeOver,
    /// Someone else holds a valid lease.
    Wait { holder: String },
}

/// Decides from the lease's spec and the time. Pure.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else { return Decision::TakeOver };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    if holder == me {
        return Decision::Renew;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match renewed {
        Some(t) if t + SignedDuration::from_secs(seconds) > now => Decision::Wait { holder },
        _ => Decision::TakeOver,
    }
}

/// A lease held (or wanted) by this replica.
pub struct LeaseLock {
    api: Api<Lease>,
    config: LeaseConfig,
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        LeaseLock { api: Api::namespaced(client, &config.namespace), config }
    }

    fn spec(&self, now: Timestamp, previous: Option<&LeaseSpec>, take_over: bool) -> LeaseSpec {
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: if take_over { Some(MicroTime(now)) } else { previous.and_then(|p| p.acquire_time.clone()) },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if take_over && previous.is_some() { transitions + 1 } else { transitions }),
            ..LeaseSpec::default()
        }
    }

    /// Acquires or renews the lease; `Ok(false)` when another replica holds
    /// it (or won a race for it).
    pub async fn try_acquire(&self, now: Timestamp) -> Result<bool, Error> {
        let name = &self.config.name;
        let Some(lease) = self.api.get_opt(name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(now, None, true)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let take_over = match decide(lease.spec.as_ref(), &self.config.identity, now) {
            Decision::Wait { .. } => return Ok(false),
            Decision::Renew => false,
            Decision::TakeOver => true,
        };
        let updated =
            Lease { metadata: lease.metadata.clone(), spec: Some(self.spec(now, lease.spec.as_ref(), take_over)) };
        match self.api.replace(name, &PostParams::default(), &updated).await {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the lease up (on shutdown) so a successor need not wait for it
    /// to expire: as client-go does, no holder and a one-second duration.
    /// Best effort (logged).
    pub async fn release(&self) {
        let lease = match self.api.get_opt(&self.config.name).await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "leader election: cannot read the lease to release it");
                return;
            }
        };
        if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(self.config.identity.as_str()) {
            return;
        }
        let mut spec = lease.spec.clone().unwrap_or_default();
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let released = Lease { metadata: lease.metadata, spec: Some(spec) };
        match self.api.replace(&self.config.name, &PostParams::default(), &released).await {
            Ok(_) => tracing::info!(identity = %self.config.identity, "leader election: lease released"),
            Err(e) => tracing::warn!(error = %e, "leader election: cannot release the lease"),
        }
    }

    /// Waits until this replica leads, then runs `work` while renewing the
    /// lease. Returns when `work` ends, on `shutdown`, or with an error when
    /// the lease is lost (the caller exits; a restarted pod campaigns again).
    pub async fn run_elected<W, S>(&self, work: W, shutdown: S, on_change: impl Fn(bool)) -> Result<(), Error>
    where
        W: Future<Output = ()>,
        S: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        loop {
            match self.try_acquire(Timestamp::now()).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: cannot read the lease"),
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(self.config.renew_every) => {}
            }
        }
        tracing::info!(identity = %self.config.identity, lease = %self.config.name, "became leader");
        on_change(true);
        tokio::pin!(work);
        let mut last_renewal = tokio::time::Instant::now();
        let result = loop {
            tokio::select! {
                () = &mut work => break Ok(()),
                () = &mut shutdown => break Ok(()),
                () = tokio::time::sleep(self.config.renew_every) => {
                    match self.try_acquire(Timestamp::now()).await {
                        Ok(true) => last_renewal = tokio::time::Instant::now(),
                        Ok(false) => break Err(Error::Lease("another replica took the lease".into())),
                        Err(e) if last_renewal.elapsed() < self.config.duration => {
                            tracing::warn!(error = %e, "leader election: renewal failed, retrying");
                        }
                        Err(e) => break Err(Error::Lease(format!("could not renew the lease in time: {e}"))),
                    }
                }
            }
        };
        on_change(false);
        if result.is_ok() {
            self.release().await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        assert_eq!(decide(None, "a", now), Decision::TakeOver);
        assert_eq!(decide(Some(&spec("a", now)), "a", now), Decision::Renew);
        assert_eq!(
            decide(Some(&spec("b", now - SignedDuration::from_secs(5))), "a", now),
            Decision::Wait { holder: "b".into() }
        );
        assert_eq!(decide(Some(&spec("b", now - SignedDuration::from_secs(16))), "a", now), Decision::TakeOver);
        assert_eq!(decide(Some(&spec("", now)), "a", now), Decision::TakeOver);
    }

    #[test]
    fn identities_are_hostname_and_a_random_id() {
        let a = identity("strata-operator-7d9f-x2");
        let b = identity("strata-operator-7d9f-x2");
        assert!(a.starts_with("strata-operator-7d9f-x2_"), "{a}");
        assert_eq!(a.len(), "strata-operator-7d9f-x2_".len() + 32, "{a}");
        assert_ne!(a, b, "a restarted pod is a new candidate");
        // Its predecessor's valid lease is someone else's: it waits.
        let now = Timestamp::from_second(1_000_000).unwrap();
        assert_eq!(decide(Some(&spec(&a, now)), &b, now), Decision::Wait { holder: a.clone() });
    }
}

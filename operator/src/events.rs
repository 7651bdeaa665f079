//! Kubernetes Events (`events.k8s.io/v1`) about the operator's resources.
//! A repeat of an event is folded into the first one's `series` (one object,
//! a count) only when it says exactly the same thing: same object, type,
//! reason, action *and* text. kube's own `Recorder` keys on everything but
//! the text, so "3 brokers ready" would be counted as one more
//! "1 brokers ready"; this publisher never does that.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::Mutex;

/// How long a published event is remembered for grouping repeats (as long
/// as kube's Recorder and client-go's event cache keep theirs).
const GROUP_FOR: SignedDuration = SignedDuration::from_mins(6);

/// What makes two events "the same event": everything a reader sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    regarding: (Option<String>, Option<String>, Option<String>, Option<String>),
    warning: bool,
    reason: String,
    action: String,
    note: String,
}

/// Publishes events as `reporter`, grouping equal repeats.
pub struct Publisher {
    client: kube::Client,
    reporter: String,
    sent: Mutex<HashMap<Key, Event>>,
}

/// One event to publish.
#[derive(Debug, Clone)]
pub struct Note<'a> {
    pub warning: bool,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: String,
}

impl Publisher {
    pub fn new(client: kube::Client, reporter: impl Into<String>) -> Self {
        Publisher { client, reporter: reporter.into(), sent: Mutex::default() }
    }

    /// Creates the event, or counts a repeat of an equal one in its `series`.
    pub async fn publish(&self, about: &ObjectReference, n: Note<'_>) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = Key {
            regarding: (about.kind.clone(), about.namespace.clone(), about.name.clone(), about.uid.clone()),
            warning: n.warning,
            reason: n.reason.to_owned(),
            action: n.action.to_owned(),
            note: n.note.clone(),
        };
        let mut sent = self.sent.lock().await;
        sent.retain(|_, e| last_seen(e).is_some_and(|t| t + GROUP_FOR > now));
        let ns = about.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let event = match sent.get(&key) {
            Some(first) => {
                let count = first.series.as_ref().map_or(2, |s| s.count + 1);
                let mut e = first.clone();
                e.series = Some(EventSeries { count, last_observed_time: MicroTime(now) });
                let patch = serde_json::json!({ "series": e.series });
                let name = e.metadata.name.clone().unwrap_or_default();
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                e
            }
            None => {
                let e = Event {
                    metadata: ObjectMeta {
                        namespace: Some(ns.clone()),
                        name: Some(format!(
                            "{}.{:x}",
                            about.name.as_deref().unwrap_or(&self.reporter),
                            now.as_nanosecond()
                        )),
                        ..ObjectMeta::default()
                    },
                    action: Some(n.action.to_owned()),
                    reason: Some(n.reason.to_owned()),
                    note: Some(n.note),
                    type_: Some(if n.warning { "Warning" } else { "Normal" }.to_owned()),
                    event_time: Some(MicroTime(now)),
                    regarding: Some(about.clone()),
                    reporting_controller: Some(self.reporter.clone()),
                    reporting_instance: Some(self.reporter.clone()),
                    ..Event::default()
                };
                api.create(&PostParams::default(), &e).await?
            }
        };
        sent.insert(key, event);
        Ok(())
    }
}

fn last_seen(e: &Event) -> Option<Timestamp> {
    e.series.as_ref().map(|s| s.last_observed_time.0).or_else(|| e.event_time.as_ref().map(|t| t.0))
}

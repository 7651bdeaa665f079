//! `strata tenant ...`: create, update, describe, list and delete tenants,
//! with their quotas and usage.

use std::time::{Duration, UNIX_EPOCH};

use strata_client::Client;
use strata_proto::v1::{Tenant, TenantQuotas};

use super::topic::table;
use super::{QuotaArgs, TenantCommand};

/// The quota names `--clear-quota` takes (as `TenantQuotas` names them).
const QUOTAS: [&str; 8] = [
    "max_topics",
    "max_queues",
    "max_partitions",
    "max_stored_bytes",
    "produce_bytes_per_second",
    "consume_bytes_per_second",
    "requests_per_second",
    "max_connections",
];

/// A quota name for `--clear-quota`.
pub(crate) fn quota_name(s: &str) -> Result<String, String> {
    let name = s.trim().replace('-', "_");
    if QUOTAS.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(format!("unknown quota {s:?}; one of {}", QUOTAS.join(", ")))
    }
}

pub(crate) async fn run(client: &Client, cmd: TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Create { name, quotas } => {
            let tenant = client.create_tenant_with_quotas(&name, apply(TenantQuotas::default(), &quotas, &[])).await?;
            println!("created tenant {}", tenant.name);
        }
        TenantCommand::Update { name, quotas, clear } => {
            // The broker replaces the whole set: start from the current one.
            let current = client.describe_tenant(&name).await?.quotas.unwrap_or_default();
            let tenant = client.update_tenant(&name, apply(current, &quotas, &clear)).await?;
            println!("updated tenant {}", tenant.name);
            print!("{}", describe(&tenant));
        }
        TenantCommand::Describe { name, json } => {
            let tenant = client.describe_tenant(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&to_json(&tenant))?);
            } else {
                print!("{}", describe(&tenant));
            }
        }
        TenantCommand::List => {
            let mut tenants = client.list_tenants().await?;
            tenants.sort_by(|a, b| a.name.cmp(&b.name));
            let mut rows = vec![
                ["TENANT", "TOPICS", "QUEUES", "PARTITIONS", "STORED", "CONNECTIONS", "CREATED"]
                    .map(str::to_owned)
                    .to_vec(),
            ];
            rows.extend(tenants.iter().map(|t| {
                let u = t.usage.unwrap_or_default();
                let q = t.quotas.unwrap_or_default();
                vec![
                    t.name.clone(),
                    of(u64::from(t.topic_count), q.max_topics.map(u64::from)),
                    of(u64::from(u.queues), q.max_queues.map(u64::from)),
                    of(u64::from(u.partitions), q.max_partitions.map(u64::from)),
                    of_bytes(u.stored_bytes, q.max_stored_bytes),
                    of(u64::from(u.connections), q.max_connections.map(u64::from)),
                    created(t.created_at_ms),
                ]
            }));
            print!("{}", table(&rows));
        }
        TenantCommand::Delete { name } => {
            client.delete_tenant(&name).await?;
            println!("deleted tenant {name}");
        }
    }
    Ok(())
}

/// `current` with the flags given set and the `clear`ed quotas removed.
fn apply(mut q: TenantQuotas, a: &QuotaArgs, clear: &[String]) -> TenantQuotas {
    for name in clear {
        match name.as_str() {
            "max_topics" => q.max_topics = None,
            "max_queues" => q.max_queues = None,
            "max_partitions" => q.max_partitions = None,
            "max_stored_bytes" => q.max_stored_bytes = None,
            "produce_bytes_per_second" => q.produce_bytes_per_second = None,
            "consume_bytes_per_second" => q.consume_bytes_per_second = None,
            "requests_per_second" => q.requests_per_second = None,
            "max_connections" => q.max_connections = None,
            _ => {}
        }
    }
    q.max_topics = a.max_topics.or(q.max_topics);
    q.max_queues = a.max_queues.or(q.max_queues);
    q.max_partitions = a.max_partitions.or(q.max_partitions);
    q.max_stored_bytes = a.max_stored_bytes.or(q.max_stored_bytes);
    q.produce_bytes_per_second = a.produce_rate.or(q.produce_bytes_per_second);
    q.consume_bytes_per_second = a.consume_rate.or(q.consume_bytes_per_second);
    q.requests_per_second = a.requests_per_second.or(q.requests_per_second);
    q.max_connections = a.max_connections.or(q.max_connections);
    q
}

/// `usage` or `usage/limit`.
fn of(usage: u64, limit: Option<u64>) -> String {
    match limit {
        Some(l) => format!("{usage}/{l}"),
        None => usage.to_string(),
    }
}

fn bytes(b: u64) -> String {
    bytesize::ByteSize(b).display().iec().to_string()
}

fn of_bytes(usage: u64, limit: Option<u64>) -> String {
    match limit {
        Some(l) => format!("{}/{}", bytes(usage), bytes(l)),
        None => bytes(usage),
    }
}

fn limit(v: Option<u64>, f: impl Fn(u64) -> String) -> String {
    v.map_or_else(|| "unlimited".to_owned(), f)
}

/// The text of `tenant describe`: one row per quota with its usage.
pub(crate) fn describe(t: &Tenant) -> String {
    let q = t.quotas.unwrap_or_default();
    let u = t.usage.unwrap_or_default();
    let n = |v: u64| v.to_string();
    let rate = |v: u64| format!("{}/s", bytes(v));
    let rows = vec![
        vec!["tenant".to_owned(), t.name.clone(), String::new()],
        vec!["created".to_owned(), created(t.created_at_ms), String::new()],
        ["QUOTA", "LIMIT", "USAGE"].map(str::to_owned).to_vec(),
        vec!["max_topics".into(), limit(q.max_topics.map(u64::from), n), u.topics.to_string()],
        vec!["max_queues".into(), limit(q.max_queues.map(u64::from), n), u.queues.to_string()],
        vec!["max_partitions".into(), limit(q.max_partitions.map(u64::from), n), u.partitions.to_string()],
        vec!["max_stored_bytes".into(), limit(q.max_stored_bytes, bytes), bytes(u.stored_bytes)],
        vec!["produce_bytes_per_second".into(), limit(q.produce_bytes_per_second, rate), "-".into()],
        vec!["consume_bytes_per_second".into(), limit(q.consume_bytes_per_second, rate), "-".into()],
        vec!["requests_per_second".into(), limit(q.requests_per_second.map(u64::from), n), "-".into()],
        vec!["max_connections".into(), limit(q.max_connections.map(u64::from), n), u.connections.to_string()],
    ];
    table(&rows)
}

/// The JSON of `tenant describe --json`: unset quotas are `null`.
fn to_json(t: &Tenant) -> serde_json::Value {
    let q = t.quotas.unwrap_or_default();
    let u = t.usage.unwrap_or_default();
    serde_json::json!({
        "name": t.name,
        "created_at_ms": t.created_at_ms,
        "quotas": {
            "max_topics": q.max_topics,
            "max_queues": q.max_queues,
            "max_partitions": q.max_partitions,
            "max_stored_bytes": q.max_stored_bytes,
            "produce_bytes_per_second": q.produce_bytes_per_second,
            "consume_bytes_per_second": q.consume_bytes_per_second,
            "requests_per_second": q.requests_per_second,
            "max_connections": q.max_connections,
        },
        "usage": {
            "topics": u.topics,
            "queues": u.queues,
            "partitions": u.partitions,
            "stored_bytes": u.stored_bytes,
            "connections": u.connections,
        },
    })
}

/// Creation time as RFC 3339, or `-` when the broker does not know it.
fn created(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_merges_flags_and_clears() {
        let current = TenantQuotas { max_topics: Some(5), max_queues: Some(2), ..Default::default() };
        let args = QuotaArgs { max_topics: Some(7), produce_rate: Some(1024), ..Default::default() };
        let q = apply(current, &args, &["max_queues".to_owned()]);
        assert_eq!(q.max_topics, Some(7));
        assert_eq!(q.max_queues, None);
        assert_eq!(q.produce_bytes_per_second, Some(1024));
        assert!(quota_name("max-topics").is_ok());
        assert!(quota_name("nope").unwrap_err().contains("max_topics"));
    }

    #[test]
    fn describe_shows_limits_and_usage() {
        let t = Tenant {
            name: "a".into(),
            quotas: Some(TenantQuotas {
                max_topics: Some(3),
                produce_bytes_per_second: Some(1 << 20),
                ..Default::default()
            }),
            usage: Some(strata_proto::v1::TenantUsage { topics: 2, ..Default::default() }),
            ..Default::default()
        };
        let text = describe(&t);
        assert!(text.contains("max_topics                3          2"), "{text}");
        assert!(text.contains("1.0 MiB/s"), "{text}");
        assert!(text.contains("max_queues                unlimited  0"), "{text}");
    }
}

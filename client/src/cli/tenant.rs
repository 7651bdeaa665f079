//! `strata tenant ...`: create, list and delete tenants.

use std::time::{Duration, UNIX_EPOCH};

use strata_client::Client;

use super::TenantCommand;
use super::topic::table;

pub(crate) async fn run(client: &Client, cmd: TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Create { name } => {
            let tenant = client.create_tenant(&name).await?;
            println!("created tenant {}", tenant.name);
        }
        TenantCommand::List => {
            let mut tenants = client.list_tenants().await?;
            tenants.sort_by(|a, b| a.name.cmp(&b.name));
            let rows: Vec<Vec<String>> = tenants
                .iter()
                .map(|t| vec![t.name.clone(), format!("{} topics", t.topic_count), created(t.created_at_ms)])
                .collect();
            print!("{}", table(&rows));
        }
        TenantCommand::Delete { name } => {
            client.delete_tenant(&name).await?;
            println!("deleted tenant {name}");
        }
    }
    Ok(())
}

/// Creation time as RFC 3339, or `-` when the broker does not know it.
fn created(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

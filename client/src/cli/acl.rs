//! `strata acl add|list|remove`: a tenant's ACL bindings (cluster admins).
//! The tenant is the global `--tenant` (`default` when absent; `list`
//! without it shows every tenant).

use strata_client::{Acl, AclOperation, AclPatternType, AclResourceKind, Client};

use super::topic::table;
use super::{AclArgs, AclCommand};

pub(crate) async fn run(client: &Client, cmd: AclCommand) -> anyhow::Result<()> {
    let tenant = client.tenant();
    match cmd {
        AclCommand::Add(args) => {
            let acl = binding(args)?;
            let shown = describe(&acl);
            client.add_acl(tenant, acl).await?;
            println!("granted {shown}");
        }
        AclCommand::Remove(args) => {
            let acl = binding(args)?;
            let shown = describe(&acl);
            client.remove_acl(tenant, acl).await?;
            println!("removed {shown}");
        }
        AclCommand::List { principal, json } => {
            let acls = client.list_acls(tenant, principal.as_deref().unwrap_or("")).await?;
            if json {
                let rows: Vec<serde_json::Value> = acls.iter().map(to_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let mut rows = vec![
                    ["TENANT", "PRINCIPAL", "RESOURCE", "PATTERN", "NAME", "OPERATION"].map(String::from).to_vec(),
                ];
                for a in &acls {
                    rows.push(vec![
                        a.tenant.clone(),
                        a.principal.clone(),
                        kind_name(a.resource_kind()).to_owned(),
                        pattern_name(a.pattern_type()).to_owned(),
                        a.resource_name.clone(),
                        operation_name(a.operation()).to_owned(),
                    ]);
                }
                print!("{}", table(&rows));
            }
        }
    }
    Ok(())
}

fn binding(args: AclArgs) -> anyhow::Result<Acl> {
    let (kind, name) = match (args.topic, args.queue, args.group) {
        (Some(n), None, None) => (AclResourceKind::Topic, n),
        (None, Some(n), None) => (AclResourceKind::Queue, n),
        (None, None, Some(n)) => (AclResourceKind::Group, n),
        _ => anyhow::bail!("name exactly one of --topic, --queue or --group"),
    };
    let operation = match args.operation.as_str() {
        "produce" => AclOperation::Produce,
        "consume" => AclOperation::Consume,
        "admin" => AclOperation::Admin,
        "describe" => AclOperation::Describe,
        "all" => AclOperation::All,
        other => anyhow::bail!("unknown operation {other:?}"),
    };
    let pattern = if args.prefix { AclPatternType::Prefixed } else { AclPatternType::Literal };
    Ok(Acl {
        tenant: String::new(),
        principal: args.principal,
        resource_kind: kind as i32,
        pattern_type: pattern as i32,
        resource_name: name,
        operation: operation as i32,
    })
}

fn kind_name(k: AclResourceKind) -> &'static str {
    match k {
        AclResourceKind::Topic => "topic",
        AclResourceKind::Queue => "queue",
        AclResourceKind::Group => "group",
        AclResourceKind::Unspecified => "-",
    }
}

fn pattern_name(p: AclPatternType) -> &'static str {
    match p {
        AclPatternType::Prefixed => "prefixed",
        AclPatternType::Literal | AclPatternType::Unspecified => "literal",
    }
}

fn operation_name(o: AclOperation) -> &'static str {
    match o {
        AclOperation::All => "all",
        AclOperation::Produce => "produce",
        AclOperation::Consume => "consume",
        AclOperation::Admin => "admin",
        AclOperation::Describe => "describe",
        AclOperation::Unspecified => "-",
    }
}

/// `principal P: OP on KIND NAME[*]` for confirmations.
fn describe(a: &Acl) -> String {
    let star = if a.pattern_type() == AclPatternType::Prefixed { "*" } else { "" };
    format!(
        "principal {}: {} on {} {}{star}",
        a.principal,
        operation_name(a.operation()),
        kind_name(a.resource_kind()),
        a.resource_name
    )
}

fn to_json(a: &Acl) -> serde_json::Value {
    serde_json::json!({
        "tenant": a.tenant,
        "principal": a.principal,
        "resource": kind_name(a.resource_kind()),
        "pattern": pattern_name(a.pattern_type()),
        "name": a.resource_name,
        "operation": operation_name(a.operation()),
    })
}

//! `strata principal ...` and `strata token ...`: who may authenticate, and
//! their bearer tokens. The tenant is the global `--tenant` (`default`
//! when absent).

use strata_client::Client;

use super::topic::table;
use super::{PrincipalCommand, TokenCommand};

pub(crate) async fn run_principal(client: &Client, cmd: PrincipalCommand) -> anyhow::Result<()> {
    let tenant = client.tenant();
    match cmd {
        PrincipalCommand::Create { name } => {
            let p = client.create_principal(tenant, &name).await?;
            println!("created principal {} in tenant {}", p.name, p.tenant);
        }
        PrincipalCommand::List => {
            let principals = client.list_principals(tenant).await?;
            let rows: Vec<Vec<String>> = principals
                .iter()
                .map(|p| {
                    let ids: Vec<&str> = p.tokens.iter().map(|t| t.id.as_str()).collect();
                    let tokens = if ids.is_empty() { "-".to_owned() } else { ids.join(",") };
                    vec![p.tenant.clone(), p.name.clone(), tokens]
                })
                .collect();
            print!("{}", table(&rows));
        }
        PrincipalCommand::Delete { name } => {
            client.delete_principal(tenant, &name).await?;
            println!("deleted principal {name}");
        }
    }
    Ok(())
}

pub(crate) async fn run_token(client: &Client, cmd: TokenCommand) -> anyhow::Result<()> {
    let tenant = client.tenant();
    match cmd {
        TokenCommand::Issue { principal } => {
            let (token, id) = client.issue_token(tenant, &principal).await?;
            // The token alone on stdout (scripts capture it); its id on stderr.
            println!("{token}");
            eprintln!("issued token {id} for principal {principal}");
        }
        TokenCommand::Revoke { principal, token_or_id } => {
            client.revoke_token(tenant, &principal, &token_or_id).await?;
            println!("revoked token of principal {principal}");
        }
    }
    Ok(())
}

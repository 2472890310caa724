//! The `chainledger` binary: parses the command line and hands over to the library.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use chainledger::config::{Cli, Command};
use chainledger::{app, db, tools};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Ok(false): the command ran and its answer is "no" (a failed check): exit 1, and
    // the command has said why on stdout.
    let result: anyhow::Result<bool> = match cli.command {
        Command::Serve(cfg) => match app::start(*cfg).await {
            Ok(running) => {
                running.until_signalled().await;
                Ok(true)
            }
            Err(e) => Err(e),
        },
        Command::Migrate(args) => {
            async {
                let pool = db::connect(&args, 3).await?;
                db::migrate(&pool).await?;
                tracing::info!("migrations applied");
                Ok(true)
            }
            .await
        }
        Command::RebuildProjections(args) => tools::rebuild_projections(args).await,
        Command::AuditExport(args) => tools::audit_export(args).await,
        Command::VerifyLog(args) => tools::verify_log(args).await,
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            // The refusal line: a driver's message may quote a URL with its password.
            eprintln!(
                "chainledger: {}",
                chainledger::redact::redact(&format!("{e:#}"))
            );
            std::process::exit(1);
        }
    }
}

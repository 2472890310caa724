//! The `chainledger` binary: parses the command line and hands over to the library.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use chainledger::config::{Cli, Command};
use chainledger::{app, db};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(cfg) => match app::start(*cfg).await {
            Ok(running) => {
                running.until_signalled().await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        Command::Migrate(args) => {
            async {
                let pool = db::connect(&args, 2).await?;
                db::migrate(&pool).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            .await
        }
    };
    if let Err(e) = result {
        eprintln!("chainledger: {e:#}");
        std::process::exit(1);
    }
}

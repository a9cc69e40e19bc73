//! `pool-server`: listens for pool clients and computes the parts they send.

use clap::Parser;
use pool_server::cli::{self, ServerArgs};

/// A pool worker server: computes parts of jobs sent by pool-client.
///
/// Start one on each machine (or several ports on one), then list them in a job file.
/// Logs go to standard error; set RUST_LOG=debug for a line per part.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli::init_logging("info");
    cli::run(cli.server).await
}

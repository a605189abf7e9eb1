//! The `tollgate` binary: parse the command line, run it, report failures.

use clap::Parser;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = tollgate::cli::Cli::parse();
    match tollgate::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tollgate: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! The `tollgate` binary: parse the command line, run it, report failures.

use clap::Parser;

/// mimalloc: a call allocates many small short-lived buffers (JSON, HTTP
/// frames) across threads; measured on the gateway benchmark, glibc's
/// malloc/free took about a tenth of the server's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = tollgate::cli::Cli::parse();
    match tollgate::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tollgate: {}", tollgate::cli::error_chain(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

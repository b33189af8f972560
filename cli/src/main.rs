//! The `backstop` binary: parses the command line and runs it (see the library).

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = backstop_cli::args::Cli::parse();
    match backstop_cli::run(&cli).await {
        Ok(out) => {
            print!("{}", out.text);
            std::process::exit(out.status);
        }
        Err(error) => {
            // A last guard: no password in what is printed, whatever the error.
            eprintln!(
                "error: {}",
                backstop_cli::redact::redact_all(&error.to_string())
            );
            std::process::exit(1);
        }
    }
}

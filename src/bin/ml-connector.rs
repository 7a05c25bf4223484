//! `ml-connector`: the command line. All logic lives in the library (`ml_connector::cli`).

#[tokio::main]
async fn main() {
    std::process::exit(ml_connector::cli::main().await);
}

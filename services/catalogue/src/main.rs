use std::process::ExitCode;

use pirus_catalogue::Config;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let config: Config = pirus_server::options::parse();
    pirus_server::telemetry::init(config.common.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pirus-catalogue: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listeners = pirus_server::Listeners::bind(config.grpc_addr, config.http_addr).await?;
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            pirus_server::shutdown_signal().await;
            on_signal.cancel();
        });
        pirus_catalogue::run(config, listeners, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pirus-catalogue: {e:#}");
            ExitCode::FAILURE
        }
    }
}

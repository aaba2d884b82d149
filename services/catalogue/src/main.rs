use std::process::ExitCode;

fn main() -> ExitCode {
    if pirus_catalogue::token_cli::is_token_command() {
        return pirus_catalogue::token_cli::token_command();
    }
    if pirus_catalogue::usage_cli::is_usage_command() {
        return pirus_catalogue::usage_cli::usage_command();
    }
    pirus_server::process::main("pirus-catalogue", pirus_catalogue::run)
}

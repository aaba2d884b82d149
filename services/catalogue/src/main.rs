use std::process::ExitCode;

fn main() -> ExitCode {
    pirus_server::process::main("pirus-catalogue", pirus_catalogue::run)
}

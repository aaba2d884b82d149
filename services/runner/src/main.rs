use std::process::ExitCode;

fn main() -> ExitCode {
    pirus_server::process::main("pirus-runner", pirus_runner::run)
}

fn main() -> std::process::ExitCode {
    pirus_cli::main()
}

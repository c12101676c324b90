fn main() -> std::process::ExitCode {
    lifecycle_shim::cli::main()
}

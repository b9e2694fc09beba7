//! The `loadtest` binary: see the library (`lib.rs`) for what it does.

fn main() -> std::process::ExitCode {
    loadtest::cli::main()
}

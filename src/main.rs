//! The `pgtunnel` binary: everything lives in the library; this file only hands the
//! command line to `cli::main` and turns its outcome into an exit code.

fn main() -> std::process::ExitCode {
    pgtunnel::cli::main()
}

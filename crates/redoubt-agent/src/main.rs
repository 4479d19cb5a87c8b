//! `redoubt-agent`: the device daemon. Everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    redoubt_agent::cli::main()
}

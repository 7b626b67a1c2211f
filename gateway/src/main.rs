//! The `samblik` command. All the work is in the library; this only parses arguments.

samblik_gateway::global_allocator!();

fn main() -> std::process::ExitCode {
    samblik_gateway::cli::main()
}

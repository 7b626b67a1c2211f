//! The `samblik` command. All the work is in the library; this only parses arguments.

samblik::global_allocator!();

fn main() -> std::process::ExitCode {
    samblik::cli::main()
}

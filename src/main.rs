//! `hsap-tune`: parses the command line and hands it to the library.

use clap::Parser;
use std::process::ExitCode;

// The planner's searches build and drop many small vectors per priced group; glibc's allocator
// took a fifth of a 1M-document run's CPU time (docs/planner.md, "Speed").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = hsap::cli::Cli::parse();
    // stderr stays unlocked: progress bars draw on it from worker threads, which would block
    // forever behind a lock held here for the whole run.
    let stdout = std::io::stdout();
    match hsap::cli::run(cli, &mut stdout.lock(), &mut std::io::stderr()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`hsap-tune inspect ... | head`) is the reader's choice, not an error.
        Err(hsap::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

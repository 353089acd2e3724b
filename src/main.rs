//! `hsap-tune`: parses the command line and hands it to the library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = hsap::cli::Cli::parse();
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    match hsap::cli::run(cli, &mut stdout.lock(), &mut stderr.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`hsap-tune inspect ... | head`) is the reader's choice, not an error.
        Err(hsap::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

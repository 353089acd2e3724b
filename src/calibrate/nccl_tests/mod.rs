//! Parser for the standard output of NVIDIA's nccl-tests (`all_reduce_perf`, `all_gather_perf`,
//! `sendrecv_perf` and the rest) as people publish it: with or without the leading `#`, with
//! `mpirun --tag-output` prefixes, NCCL INFO lines anywhere (even inside the table), old and new
//! column sets, cut-off runs, several runs in one file, and shell or kubectl lines around the log.
//!
//! What the parser cannot read it infers and says so (the `from` of every [`Fact`]), and what it
//! cannot infer it reports as missing, so the caller can ask the user (`--op`, `--ranks`,
//! `--nodes`). Input that is not a log, or a table with unreadable rows, is an [`Error::Input`]
//! naming the file and line.
//!
//! `log` holds the types of a parsed log, `parser` reads the lines, and `infer` works out what
//! the lines leave open.

mod infer;
mod log;
mod parser;

pub use log::*;

use crate::error::{Error, Result};
use std::path::Path;

/// Reads and parses an nccl-tests log.
pub fn read(path: &Path) -> Result<NcclLog> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.contains(&0) {
        return Err(Error::input(
            path,
            0,
            "this is a binary file, not an nccl-tests log",
            "pass the text that all_reduce_perf (or another nccl-tests binary) printed",
        ));
    }
    parse(path, &String::from_utf8_lossy(&bytes))
}

/// Parses the text of an nccl-tests log; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<NcclLog> {
    parser::parse(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_names_read_every_spelling() {
        assert_eq!(NcclOp::from_name("all_to_all"), Some(NcclOp::AllToAll));
        assert_eq!(NcclOp::from_name("alltoall"), Some(NcclOp::AllToAll));
        assert_eq!(NcclOp::from_name("alltoall_perf"), Some(NcclOp::AllToAll));
        assert_eq!(NcclOp::from_name("send_recv"), Some(NcclOp::SendRecv));
        assert_eq!(NcclOp::from_name("broadcast"), Some(NcclOp::Broadcast));
        assert_eq!(NcclOp::from_name("allreduce"), None);
    }
}

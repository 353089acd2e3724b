//! Cutting a trace into global batches, the unit the planner solves for.

use crate::error::{Error, Result};
use crate::units::thousands;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// How global batches are formed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchBy {
    /// A fixed number of documents per batch (FlexSP's convention: 512).
    Count(usize),
    /// As many whole documents as fit in this many tokens.
    Tokens(u64),
}

/// What happens to documents longer than `max_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OverLong {
    /// Leave them out, and count them.
    #[default]
    Drop,
    /// Cut them into pieces of at most `max_seq` tokens; each piece is a document of its own.
    Split,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSpec {
    pub by: BatchBy,
    pub max_seq: Option<u32>,
    pub over_long: OverLong,
    /// Shuffle the documents with this seed before batching (ChaCha8: same order on every platform).
    pub shuffle_seed: Option<u64>,
}

/// One document (or piece of one) in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doc {
    /// Index of the document in the trace.
    pub index: u32,
    /// First token of this piece within the document (0 unless the document was split).
    pub offset: u32,
    /// Tokens in this piece.
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub index: usize,
    pub docs: Vec<Doc>,
}

impl Batch {
    pub fn tokens(&self) -> u64 {
        self.docs.iter().map(|d| u64::from(d.len)).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batches {
    pub batches: Vec<Batch>,
    /// Documents left out for being longer than `max_seq`, and their tokens.
    pub dropped: usize,
    pub dropped_tokens: u64,
    /// Documents cut into pieces, and how many pieces that made.
    pub split: usize,
    pub split_pieces: usize,
}

/// The most tokens a batch may hold, and so a document or an SP group's packed sequence: the
/// `cu_seqlens` FlashAttention and the plans take are int32.
pub const MAX_BATCH_TOKENS: u64 = i32::MAX as u64;

const TOKENS_WHY: &str = "FlashAttention's cu_seqlens are int32";

impl BatchSpec {
    fn check(&self) -> Result<()> {
        if let Some(m) = self.max_seq.filter(|&m| u64::from(m) > MAX_BATCH_TOKENS) {
            return Err(Error::invalid(
                format!("--max-seq {} is more tokens than a batch may hold (at most {}: {TOKENS_WHY})", thousands(u64::from(m)), thousands(MAX_BATCH_TOKENS)),
                "cut longer documents into pieces with a smaller --max-seq and --over-long split",
            ));
        }
        if let BatchBy::Tokens(t) = self.by {
            if t > MAX_BATCH_TOKENS {
                return Err(Error::invalid(
                    format!("--batch-tokens {} is more than a batch may hold (at most {}: {TOKENS_WHY})", thousands(t), thousands(MAX_BATCH_TOKENS)),
                    "lower --batch-tokens",
                ));
            }
        }
        match self.by {
            BatchBy::Count(0) => Err(Error::invalid(
                "--global-batch must be at least 1",
                "FlexSP's convention is --global-batch 512",
            )),
            BatchBy::Tokens(0) => Err(Error::invalid("--batch-tokens must be at least 1", "try --batch-tokens 1048576")),
            BatchBy::Tokens(t) => match self.max_seq {
                Some(m) if u64::from(m) > t => Err(Error::invalid(
                    format!("--max-seq {m} is larger than --batch-tokens {t}: a document could not fit any batch"),
                    "lower --max-seq or raise --batch-tokens",
                )),
                None => Err(Error::invalid(
                    "--batch-tokens needs --max-seq, so that every document fits a batch",
                    format!("add --max-seq {t} (or less)"),
                )),
                _ => Ok(()),
            },
            BatchBy::Count(_) => match self.max_seq {
                Some(0) => Err(Error::invalid("--max-seq must be at least 1", "omit --max-seq to keep every document")),
                _ => Ok(()),
            },
        }
    }
}

/// Cuts `lengths` (training order) into batches.
pub fn make_batches(lengths: &[u32], spec: &BatchSpec) -> Result<Batches> {
    spec.check()?;
    let mut order: Vec<u32> = (0..lengths.len() as u32).collect();
    if let Some(seed) = spec.shuffle_seed {
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    }
    let mut out = Batches {
        batches: Vec::new(),
        dropped: 0,
        dropped_tokens: 0,
        split: 0,
        split_pieces: 0,
    };
    let mut docs = Vec::with_capacity(lengths.len());
    for index in order {
        let len = lengths[index as usize];
        match spec.max_seq {
            Some(m) if len > m => match spec.over_long {
                OverLong::Drop => {
                    out.dropped += 1;
                    out.dropped_tokens += u64::from(len);
                }
                OverLong::Split => {
                    out.split += 1;
                    let mut offset = 0;
                    while offset < len {
                        let piece = m.min(len - offset);
                        docs.push(Doc { index, offset, len: piece });
                        out.split_pieces += 1;
                        offset += piece;
                    }
                }
            },
            _ => docs.push(Doc { index, offset: 0, len }),
        }
    }
    out.batches = match spec.by {
        BatchBy::Count(n) => docs.chunks(n).map(<[Doc]>::to_vec).collect::<Vec<_>>(),
        BatchBy::Tokens(budget) => by_tokens(docs, budget),
    }
    .into_iter()
    .enumerate()
    .map(|(index, docs)| Batch { index, docs })
    .collect();
    if let Some(b) = out.batches.iter().find(|b| b.tokens() > MAX_BATCH_TOKENS) {
        return Err(Error::invalid(
            format!(
                "batch {} holds {} tokens, more than a batch may hold (at most {}: {TOKENS_WHY})",
                b.index,
                thousands(b.tokens()),
                thousands(MAX_BATCH_TOKENS)
            ),
            "lower --global-batch or --max-seq, or cut batches by tokens with --batch-tokens",
        ));
    }
    Ok(out)
}

/// Greedy in order: a batch closes when the next document would push it over the budget.
fn by_tokens(docs: Vec<Doc>, budget: u64) -> Vec<Vec<Doc>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut tokens = 0u64;
    for doc in docs {
        if tokens + u64::from(doc.len) > budget && !current.is_empty() {
            batches.push(std::mem::take(&mut current));
            tokens = 0;
        }
        tokens += u64::from(doc.len);
        current.push(doc);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(by: BatchBy, max_seq: Option<u32>, over_long: OverLong) -> BatchSpec {
        BatchSpec {
            by,
            max_seq,
            over_long,
            shuffle_seed: None,
        }
    }

    #[test]
    fn count_batches_keep_order_and_the_partial_tail() {
        let b = make_batches(&[5, 6, 7, 8, 9], &spec(BatchBy::Count(2), None, OverLong::Drop)).unwrap();
        let lens: Vec<Vec<u32>> = b.batches.iter().map(|b| b.docs.iter().map(|d| d.len).collect()).collect();
        assert_eq!(lens, vec![vec![5, 6], vec![7, 8], vec![9]]);
        assert_eq!(b.batches[2].index, 2);
    }

    #[test]
    fn over_long_documents_are_dropped_and_counted() {
        let b = make_batches(&[5, 100, 7], &spec(BatchBy::Count(8), Some(10), OverLong::Drop)).unwrap();
        assert_eq!((b.dropped, b.dropped_tokens), (1, 100));
        assert_eq!(b.batches[0].docs.iter().map(|d| d.index).collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn over_long_documents_are_split_into_max_seq_pieces() {
        let b = make_batches(&[25], &spec(BatchBy::Count(8), Some(10), OverLong::Split)).unwrap();
        let pieces: Vec<(u32, u32)> = b.batches[0].docs.iter().map(|d| (d.offset, d.len)).collect();
        assert_eq!(pieces, vec![(0, 10), (10, 10), (20, 5)]);
        assert_eq!((b.split, b.split_pieces), (1, 3));
    }

    #[test]
    fn token_batches_never_exceed_the_budget() {
        let b = make_batches(&[4, 4, 4, 9, 1], &spec(BatchBy::Tokens(10), Some(10), OverLong::Drop)).unwrap();
        let tokens: Vec<u64> = b.batches.iter().map(Batch::tokens).collect();
        assert_eq!(tokens, vec![8, 4, 10]);
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let lengths: Vec<u32> = (1..=100).collect();
        let mut s = spec(BatchBy::Count(100), None, OverLong::Drop);
        s.shuffle_seed = Some(7);
        let a = make_batches(&lengths, &s).unwrap();
        let b = make_batches(&lengths, &s).unwrap();
        assert_eq!(a, b);
        let mut idx: Vec<u32> = a.batches[0].docs.iter().map(|d| d.index).collect();
        assert_ne!(idx, (0..100).collect::<Vec<_>>());
        idx.sort_unstable();
        assert_eq!(idx, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn inconsistent_specs_are_refused() {
        assert!(make_batches(&[1], &spec(BatchBy::Count(0), None, OverLong::Drop)).is_err());
        assert!(make_batches(&[1], &spec(BatchBy::Tokens(10), Some(20), OverLong::Drop)).is_err());
        assert!(make_batches(&[1], &spec(BatchBy::Tokens(10), None, OverLong::Drop)).is_err());
    }
}

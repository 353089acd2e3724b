//! Varlen metadata of a packed buffer: where each document's run of tokens sits (the padded THD
//! `cu_seqlens` form), how many of its rows are real, which document it is, and each row's
//! position in its document. The attention kernels (kernels/attention.cu and its CPU mirror,
//! [`super::attention`]) take exactly this; it is derived from the plan's per-rank layouts, so
//! that the reference executor proves the plan's `cu_seqlens` right.

use crate::error::{Error, Result};
use crate::plan::RankLayout;
use crate::scheme::{GroupShape, Scheme};
use serde::{Deserialize, Serialize};

/// Document id of a segment that holds no real token (a run made only of padding).
pub const NO_DOC: u32 = u32::MAX;
/// Position of a padding row.
pub const NO_POS: u32 = u32::MAX;

/// One packed buffer's segments. Segment `k` occupies rows
/// `cu_seqlens_padded[k] .. cu_seqlens_padded[k + 1]`; its first `seqlens[k]` rows are real tokens
/// of document `docs[k]`, the rest padding. Rows after the last segment are end padding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VarlenMeta {
    pub rows: u32,
    pub cu_seqlens_padded: Vec<u32>,
    pub seqlens: Vec<u32>,
    pub docs: Vec<u32>,
    /// Position of every row within its document; [`NO_POS`] on padding rows.
    pub pos: Vec<u32>,
}

impl VarlenMeta {
    pub fn segments(&self) -> usize {
        self.seqlens.len()
    }

    /// Cumulative real lengths (the unpadded `cu_seqlens`), starting at 0.
    pub fn cu_seqlens(&self) -> Vec<u32> {
        std::iter::once(0)
            .chain(self.seqlens.iter().scan(0u32, |acc, &l| {
                *acc += l;
                Some(*acc)
            }))
            .collect()
    }

    pub fn real_tokens(&self) -> u64 {
        self.seqlens.iter().map(|&l| u64::from(l)).sum()
    }

    /// The longest segment, which sizes the kernels' grids.
    pub fn max_seqlen(&self) -> u32 {
        self.seqlens.iter().copied().max().unwrap_or(0)
    }

    /// `(document, position)` of every row, `None` on padding.
    pub fn row_tokens(&self) -> Vec<Option<(u32, u32)>> {
        let mut rows = vec![None; self.rows as usize];
        for k in 0..self.segments() {
            let start = self.cu_seqlens_padded[k] as usize;
            for row in start..start + self.seqlens[k] as usize {
                rows[row] = Some((self.docs[k], self.pos[row]));
            }
        }
        rows
    }

    /// The buffers laid end to end (Ulysses: a slot's shards; all-gather: the slots). A part's end
    /// padding becomes a segment of padding only, so that the segments stay contiguous.
    pub fn concat(parts: &[&VarlenMeta]) -> VarlenMeta {
        let mut out = VarlenMeta {
            rows: 0,
            cu_seqlens_padded: vec![0],
            seqlens: Vec::new(),
            docs: Vec::new(),
            pos: Vec::new(),
        };
        for part in parts {
            let base = out.rows;
            for k in 0..part.segments() {
                out.close_gap(base + part.cu_seqlens_padded[k]);
                out.cu_seqlens_padded.push(base + part.cu_seqlens_padded[k + 1]);
                out.seqlens.push(part.seqlens[k]);
                out.docs.push(part.docs[k]);
            }
            out.pos.extend_from_slice(&part.pos);
            out.rows += part.rows;
        }
        out
    }

    /// Turns rows between the last segment and `start` into a segment of padding.
    fn close_gap(&mut self, start: u32) {
        let end = self.cu_seqlens_padded.last().copied().unwrap_or(0);
        if start > end {
            self.cu_seqlens_padded.push(start);
            self.seqlens.push(0);
            self.docs.push(NO_DOC);
        }
    }

    /// The first `rows` rows, which must end on a segment boundary (the sequence-aware scheme's
    /// split documents, which are the only ones that circulate).
    pub fn prefix(&self, rows: u32) -> Result<VarlenMeta> {
        if rows == self.rows {
            return Ok(self.clone());
        }
        let k = self
            .cu_seqlens_padded
            .iter()
            .position(|&c| c == rows)
            .ok_or_else(|| Error::internal(format!("a prefix of {rows} rows does not end on a segment boundary")))?;
        Ok(VarlenMeta {
            rows,
            cu_seqlens_padded: self.cu_seqlens_padded[..=k].to_vec(),
            seqlens: self.seqlens[..k].to_vec(),
            docs: self.docs[..k].to_vec(),
            pos: self.pos[..rows as usize].to_vec(),
        })
    }

    /// Query-key pairs the document-masked causal mask lets through, queries in `self` against
    /// keys in `keys`: the attention work of one kernel call.
    pub fn pairs(&self, keys: &VarlenMeta) -> u64 {
        // Positions of each document's queries, sorted.
        let mut queries: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
        for (k, &doc) in self.docs.iter().enumerate().filter(|(_, &d)| d != NO_DOC) {
            let q0 = self.cu_seqlens_padded[k] as usize;
            queries.entry(doc).or_default().extend_from_slice(&self.pos[q0..q0 + self.seqlens[k] as usize]);
        }
        queries.values_mut().for_each(|v| v.sort_unstable());
        let mut total = 0u64;
        for (k, doc) in keys.docs.iter().enumerate() {
            let Some(qpos) = queries.get(doc) else { continue };
            let k0 = keys.cu_seqlens_padded[k] as usize;
            for &p in &keys.pos[k0..k0 + keys.seqlens[k] as usize] {
                // Queries at positions >= p see this key.
                total += (qpos.len() - qpos.partition_point(|&x| x < p)) as u64;
            }
        }
        total
    }
}

/// The varlen metadata of every buffer a group's attention touches, derived from the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupVarlen {
    pub shape: GroupShape,
    /// Rows of every rank's shard (real tokens and padding), equal over the group.
    pub shard_rows: u32,
    /// Per local rank: its shard before any communication.
    pub shards: Vec<VarlenMeta>,
    /// Per slot: the slot's token list, the concatenation of its Ulysses ranks' shards (what each
    /// rank holds, for its heads, after the Ulysses all-to-all).
    pub slots: Vec<VarlenMeta>,
    /// Per document: whether its tokens sit on more than one slot.
    pub split: Vec<bool>,
    /// Rows of each slot that circulate around the ring: the whole slot, or for the sequence-aware
    /// scheme only the leading rows holding split documents.
    pub block_rows: u32,
    /// Per slot: the metadata of the block that circulates.
    pub blocks: Vec<VarlenMeta>,
}

impl GroupVarlen {
    /// Reads a group's layout from its per-rank layouts (`plan.json`'s `rank_layouts`), checking
    /// that they are consistent: one per rank, slots in order, every token of every document
    /// exactly once, segments holding one document each.
    pub fn from_rank_layouts(shape: &GroupShape, docs: &[u32], layouts: &[RankLayout]) -> Result<GroupVarlen> {
        let (u, r) = (shape.ulysses as usize, shape.ring as usize);
        if u == 0 || r == 0 || layouts.len() != u * r {
            return Err(Error::invalid(
                format!("a {shape} group has {} rank layouts; it needs ulysses x ring = {}", layouts.len(), u * r),
                "regenerate the plan",
            ));
        }
        let mut offsets = Vec::with_capacity(docs.len() + 1);
        let mut at = 0u64;
        offsets.push(0);
        for &d in docs {
            at += u64::from(d);
            offsets.push(at);
        }
        let shard_rows = layouts
            .iter()
            .map(|l| l.cu_seqlens_padded.last().copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        let mut seen = vec![false; at as usize];
        let mut slot_of_doc: Vec<Option<u32>> = vec![None; docs.len()];
        let mut split = vec![false; docs.len()];
        let mut shards = Vec::with_capacity(layouts.len());
        for (q, layout) in layouts.iter().enumerate() {
            if layout.slot as usize != q / u {
                return Err(Error::invalid(
                    format!("rank {} (local {q}) says slot {}; local rank q sits in slot q / ulysses = {}", layout.rank, layout.slot, q / u),
                    "rank_layouts must be in local-rank order",
                ));
            }
            let meta = shard_meta(layout, &offsets, shard_rows)?;
            for row in meta.row_tokens().into_iter().flatten() {
                let idx = (offsets[row.0 as usize] + u64::from(row.1)) as usize;
                if std::mem::replace(&mut seen[idx], true) {
                    return Err(Error::invalid(
                        format!("token {} of document {} is held by two ranks (again by rank {})", row.1, row.0, layout.rank),
                        "regenerate the plan",
                    ));
                }
                match slot_of_doc[row.0 as usize] {
                    None => slot_of_doc[row.0 as usize] = Some(layout.slot),
                    Some(s) if s != layout.slot => split[row.0 as usize] = true,
                    Some(_) => {}
                }
            }
            shards.push(meta);
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            let doc = offsets.partition_point(|&o| o <= missing as u64) - 1;
            return Err(Error::invalid(
                format!("token {} of document {doc} is held by no rank", missing as u64 - offsets[doc]),
                "regenerate the plan",
            ));
        }
        let slots: Vec<VarlenMeta> = (0..r)
            .map(|s| VarlenMeta::concat(&shards[s * u..(s + 1) * u].iter().collect::<Vec<_>>()))
            .collect();
        let block_rows = match shape.scheme {
            Scheme::Hsap => hsap_block_rows(&shards, u, &split)?,
            _ => slots.first().map_or(0, |m| m.rows),
        };
        let blocks = slots.iter().map(|m| m.prefix(block_rows)).collect::<Result<Vec<_>>>()?;
        Ok(GroupVarlen {
            shape: *shape,
            shard_rows,
            shards,
            slots,
            split,
            block_rows,
            blocks,
        })
    }

    /// The all-gathered key buffer: every slot's token list, in slot order.
    pub fn gathered(&self) -> VarlenMeta {
        VarlenMeta::concat(&self.slots.iter().collect::<Vec<_>>())
    }

    pub fn slot_rows(&self) -> u32 {
        self.shard_rows * self.shape.ulysses
    }
}

/// The rows at the head of each slot that hold split documents: up to the first segment of a
/// whole document, or to the end of the slot's last run (its end padding excluded). Equal over
/// slots, since the zigzag gives every slot the same share of every split document.
fn hsap_block_rows(shards: &[VarlenMeta], u: usize, split: &[bool]) -> Result<u32> {
    let rows: Vec<u32> = shards
        .chunks(u)
        .map(|slot| {
            let mut end = 0;
            for (i, m) in slot.iter().enumerate() {
                let base = i as u32 * m.rows;
                for k in 0..m.segments() {
                    if m.docs[k] != NO_DOC && !split[m.docs[k] as usize] {
                        return base + m.cu_seqlens_padded[k];
                    }
                    end = base + m.cu_seqlens_padded[k + 1];
                }
            }
            end
        })
        .collect();
    if rows.iter().any(|&p| p != rows[0]) {
        return Err(Error::invalid(
            format!("the split documents take different rows on different slots ({rows:?})"),
            "the sequence-aware layout zigzags split documents so that every slot holds the same share; regenerate the plan",
        ));
    }
    Ok(rows.first().copied().unwrap_or(0))
}

/// One rank's shard metadata from its plan layout: real tokens from `token_ranges` (in order)
/// fill the segments given by `cu_seqlens` and `cu_seqlens_padded`.
fn shard_meta(layout: &RankLayout, offsets: &[u64], rows: u32) -> Result<VarlenMeta> {
    let bad = |what: String| Error::invalid(format!("rank {}: {what}", layout.rank), "regenerate the plan");
    let (cu, cup) = (&layout.cu_seqlens, &layout.cu_seqlens_padded);
    if cu.is_empty() || cu.len() != cup.len() || cu[0] != 0 || cup[0] != 0 {
        return Err(bad(format!(
            "cu_seqlens ({} entries) and cu_seqlens_padded ({} entries) must both start at 0 and have the same length",
            cu.len(),
            cup.len()
        )));
    }
    let total = *offsets.last().unwrap_or(&0);
    let mut tokens = Vec::new();
    for range in &layout.token_ranges {
        if range.stride == 0 || range.end > total || range.start >= range.end {
            return Err(bad(format!("token range {}..{} (stride {}) is empty or past the group's {total} tokens", range.start, range.end, range.stride)));
        }
        let mut t = range.start;
        while t < range.end {
            let doc = offsets.partition_point(|&o| o <= t) - 1;
            tokens.push((doc as u32, (t - offsets[doc]) as u32));
            t += u64::from(range.stride);
        }
    }
    let n = cu.len() - 1;
    let mut meta = VarlenMeta {
        rows,
        cu_seqlens_padded: cup.clone(),
        seqlens: Vec::with_capacity(n),
        docs: Vec::with_capacity(n),
        pos: vec![NO_POS; rows as usize],
    };
    let mut next = tokens.iter();
    for k in 0..n {
        let (real, padded) = (cu[k + 1].checked_sub(cu[k]), cup[k + 1].checked_sub(cup[k]));
        let (Some(real), Some(padded)) = (real, padded) else {
            return Err(bad(format!("cu_seqlens decrease at entry {}", k + 1)));
        };
        if real > padded {
            return Err(bad(format!("segment {k} has {real} tokens but only {padded} rows with its padding")));
        }
        let mut doc = NO_DOC;
        for j in 0..real {
            let Some(&(d, p)) = next.next() else {
                return Err(bad(format!("cu_seqlens count {} tokens but token_ranges hold {}", cu[n], tokens.len())));
            };
            if doc != NO_DOC && d != doc {
                return Err(bad(format!("segment {k} holds tokens of documents {doc} and {d}; a segment is one document's run")));
            }
            doc = d;
            meta.pos[(cup[k] + j) as usize] = p;
        }
        meta.seqlens.push(real);
        meta.docs.push(doc);
    }
    if next.next().is_some() {
        return Err(bad(format!("token_ranges hold {} tokens but cu_seqlens count {}", tokens.len(), cu[n])));
    }
    Ok(meta)
}

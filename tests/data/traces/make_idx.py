"""Writes the Megatron-LM .idx fixtures used by tests/trace_cli.rs.

Layout (megatron/core/datasets/indexed_dataset.py, _IndexWriter): magic b"MMIDIDX\\x00\\x00",
version <Q = 1, dtype code <B (4 = int32), sequence count <Q, document count <Q, then
int32 sequence lengths, int64 sequence pointers (byte offsets into the .bin), int64 document
indices (sequence boundaries, first 0, last = sequence count).
"""
import struct

def index(lengths, doc_bounds, dtype_size=4):
    out = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 4)
    out += struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(doc_bounds))
    out += b"".join(struct.pack("<i", n) for n in lengths)
    pointer, pointers = 0, []
    for n in lengths:
        pointers.append(pointer)
        pointer += n * dtype_size
    out += b"".join(struct.pack("<q", p) for p in pointers)
    out += b"".join(struct.pack("<q", d) for d in doc_bounds)
    return out

# Three documents: sequences 0-1 (100 + 50 tokens), sequence 2 (30), sequences 3-4 (400 + 300).
good = index([100, 50, 30, 400, 300], [0, 2, 3, 5])
open("megatron_text_document.idx", "wb").write(good)
open("megatron_truncated.idx", "wb").write(good[:60])

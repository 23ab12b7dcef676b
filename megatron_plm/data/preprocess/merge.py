"""``megatron-plm merge-corpora``: shards written by ``preprocess --shard I/N`` -> the one corpus.

Shards split the inputs into contiguous runs of files and number sources and clusters as the whole
run would (every shard keeps all source labels; the cluster mapping is the same file), so merging
is concatenation, in shard order, streamed in blocks through :class:`CorpusWriter` (no re-encoding):
tokens, lengths, ids, source and cluster columns; the summary is summed, and repeated record ids
are counted again over the whole. The result is the corpus one ``preprocess`` over all inputs writes,
byte for byte (meta.json included). Before writing anything, the shards must agree: one run's shards
(the same input list and N, each index once), the same tokenizer, token dtype, vocabulary, sources,
settings and cluster namespace (the mapping's path and the cluster names, compared by hash).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megatron_plm.data.corpus import Corpus, CorpusWriter, corpus_paths, recover_interrupted
from megatron_plm.safe_io import check_free_space, check_output_prefix, terminate_as_interrupt

_BLOCK_DOCUMENTS = 1 << 20
_READ_BYTES = 1 << 24
_AGREE = ("tokenizer", "tokenizer_path", "vocab", "token_dtype", "sources", "settings", "created_by")
"""meta.json fields every shard must share (the merged corpus states them once)."""
_WRITTEN_BY_THE_WRITER = ("format_version", "num_documents", "num_tokens", "fingerprints")


@dataclass(kw_only=True)
class MergeConfig:
    inputs: list[str] = field(metadata={"cli": {"flags": ["--input"], "action": "extend"}})
    """The shards' output prefixes (``preprocess --shard I/N``), in any order: they are merged by I."""
    output_prefix: str
    """Writes the merged corpus's PREFIX.bin, PREFIX.idx, ... (as preprocess does)."""
    overwrite: bool = False
    """Replace a corpus already at the output prefix (without it, that is an error)."""
    space_check: bool = True
    """Refuse before writing when the output's filesystem has less free space than the shards take
    (``--no-space-check``: write anyway)."""

    def validate(self) -> None:
        if not self.inputs:
            raise ValueError("give the shards' prefixes as --input")
        check_output_prefix(self.output_prefix)
        if len(set(map(os.path.abspath, self.inputs))) != len(self.inputs):
            raise ValueError("--input names a shard twice")
        if os.path.abspath(self.output_prefix) in map(os.path.abspath, self.inputs):
            raise ValueError(f"--output-prefix {self.output_prefix} is one of the shards; choose another")


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def check_shards(prefixes: list[str]) -> list[Corpus]:
    """The shards opened (their files checked against their meta.json), in shard order; raises naming the
    shard and the field on which they disagree."""
    corpora = [Corpus.open(prefix) for prefix in prefixes]
    for corpus in corpora:
        if not isinstance(corpus.meta.get("shard"), dict):
            raise ValueError(
                f"{corpus_paths(corpus.prefix)['meta']}: not a shard (written without preprocess --shard I/N)"
            )
    corpora.sort(key=lambda c: c.meta["shard"]["index"])
    first = corpora[0]
    count, run = first.meta["shard"]["count"], first.meta["shard"]["inputs_sha256"]
    indices = [c.meta["shard"]["index"] for c in corpora]
    for corpus in corpora:
        shard, meta_path = corpus.meta["shard"], corpus_paths(corpus.prefix)["meta"]
        if shard["count"] != count or shard["inputs_sha256"] != run:
            raise ValueError(
                f"{meta_path}: shard {shard['index']}/{shard['count']} of a different run than "
                f"{corpus_paths(first.prefix)['meta']} (shard 0/{count}): other inputs or another N"
            )
        for name in _AGREE:
            if corpus.meta.get(name) != first.meta.get(name):
                raise ValueError(
                    f"{meta_path}: {name} {corpus.meta.get(name)!r} differs from {first.meta.get(name)!r} in "
                    f"{corpus_paths(first.prefix)['meta']}: the shards were not preprocessed alike"
                )
    missing = sorted(set(range(count)) - set(indices))
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if missing or repeated:
        raise ValueError(
            f"the shards of {count} are incomplete: "
            + "; ".join(
                ([f"missing {', '.join(f'{i}/{count}' for i in missing)}"] if missing else [])
                + ([f"given twice {', '.join(f'{i}/{count}' for i in repeated)}"] if repeated else [])
            )
        )
    with_clusters = [corpus_paths(c.prefix)["cluster"].exists() for c in corpora]
    if any(with_clusters) != all(with_clusters):
        raise ValueError(f"{corpora[with_clusters.index(False)].prefix} has no cluster column and other shards do")
    if all(with_clusters):
        names = [corpus_paths(c.prefix)["clusters"] for c in corpora]
        expected = _digest(names[0])
        for path in names[1:]:
            if _digest(path) != expected:
                raise ValueError(f"{path} lists other clusters than {names[0]}: a different cluster namespace")
    return corpora


def _summary(corpora: list[Corpus]) -> dict:
    """The shards' summaries summed, field by field, in their order (repeated ids: counted again by the caller)."""

    def add(total, part):
        if isinstance(total, dict):
            return {key: add(value, part[key]) for key, value in total.items()}
        if total is None or isinstance(total, str):
            return total
        return total + part

    summary = corpora[0].meta["summary"]
    for corpus in corpora[1:]:
        summary = add(summary, corpus.meta["summary"])
    return summary


def _ids_blocks(path: Path, counts: list[int]):
    """The ids file in pieces of ``counts`` lines each (bytes, ``\\n``-terminated), read in 16 MiB blocks."""
    with open(path, "rb") as handle:
        pending = b""
        for count in counts:
            pieces, have = [], 0
            while True:
                cut = _nth_newline(pending, count - have) if pending else None
                if cut is not None:
                    pieces.append(pending[:cut])
                    pending = pending[cut:]
                    break
                have += pending.count(b"\n")
                pieces.append(pending)
                pending = handle.read(_READ_BYTES)
                if not pending:
                    raise ValueError(f"{path}: fewer ids than documents (truncated?); rerun preprocess for this shard")
            yield b"".join(pieces)


def _cluster_names(path: Path):
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield line[:-1]


def _lengths(corpus: Corpus) -> np.ndarray:
    """The documents' lengths from the ``.idx`` (megatron's layout: after the 34-byte header), memory-mapped."""
    return np.memmap(corpus_paths(corpus.prefix)["idx"], dtype=np.int32, mode="r", offset=34, shape=(len(corpus),))


def _nth_newline(block: bytes, n: int) -> int | None:
    """The end (exclusive) of the n-th line of ``block``, or None when it holds fewer."""
    positions = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n"))
    return int(positions[n - 1]) + 1 if len(positions) >= n else None


def merge_corpora(cfg: MergeConfig) -> dict[str, Path]:
    """Write the merged corpus; on any error nothing is left at the output prefix but what was there."""
    cfg.validate()
    recover_interrupted(cfg.output_prefix)
    existing = [p for p in corpus_paths(cfg.output_prefix).values() if p.exists()]
    if existing and not cfg.overwrite:
        raise FileExistsError(
            f"{existing[0]} exists: a corpus is already at {cfg.output_prefix}; pass --overwrite "
            "to replace it, or choose another --output-prefix"
        )
    corpora = check_shards(cfg.inputs)
    if cfg.space_check:
        needed = sum(p.stat().st_size for c in corpora for p in corpus_paths(c.prefix).values() if p.exists())
        check_free_space(
            os.path.dirname(os.path.abspath(cfg.output_prefix)),
            needed + 16 * sum(len(c) for c in corpora),  # + the writer's staged columns
            what=f"the merged corpus at {cfg.output_prefix}",
            fix="free space, choose another --output-prefix, or pass --no-space-check to try anyway",
            detail="the shards' sizes",
        )
    with terminate_as_interrupt():
        return _merge(cfg, corpora)


def _merge(cfg: MergeConfig, corpora: list[Corpus]) -> dict[str, Path]:
    first = corpora[0]
    with_clusters = corpus_paths(first.prefix)["cluster"].exists()
    writer = CorpusWriter(cfg.output_prefix, with_clusters=with_clusters, token_dtype=first.meta["token_dtype"])
    try:
        for corpus in corpora:
            lengths = _lengths(corpus)
            tokens = corpus.token_array()
            sources = corpus.source_index()
            clusters = corpus.cluster_index() if with_clusters else None
            counts = [min(_BLOCK_DOCUMENTS, len(corpus) - s) for s in range(0, len(corpus), _BLOCK_DOCUMENTS)]
            ids = _ids_blocks(corpus_paths(corpus.prefix)["ids"], counts)
            start_token = 0
            for start, count, id_block in zip(range(0, len(corpus), _BLOCK_DOCUMENTS), counts, ids):
                block_lengths = np.asarray(lengths[start : start + count])
                block_sources = np.asarray(sources[start : start + count])
                block_clusters = np.asarray(clusters[start : start + count]) if clusters is not None else None
                ends = np.cumsum(block_lengths, dtype=np.int64)
                # one add per run of one source (the writer takes one source per call)
                runs = np.flatnonzero(np.r_[True, block_sources[1:] != block_sources[:-1], True])
                id_ends = np.flatnonzero(np.frombuffer(id_block, dtype=np.uint8) == ord("\n")) + 1
                for a, b in zip(runs[:-1], runs[1:]):
                    token_a = start_token + (int(ends[a - 1]) if a else 0)
                    token_b = start_token + int(ends[b - 1])
                    id_a = int(id_ends[a - 1]) if a else 0
                    writer.add(
                        np.asarray(tokens[token_a:token_b]),
                        block_lengths[a:b],
                        id_block[id_a : int(id_ends[b - 1])],
                        int(block_sources[a]),
                        block_clusters[a:b] if block_clusters is not None else None,
                    )
                start_token += int(ends[-1])
        summary = _summary(corpora)
        summary["repeated_ids"], summary["first_repeated_id"] = writer.repeated_ids()
        meta = {key: value for key, value in first.meta.items() if key not in _WRITTEN_BY_THE_WRITER and key != "shard"}
        meta["inputs"] = [item for corpus in corpora for item in corpus.meta["inputs"]]
        meta["summary"] = summary
        names = _cluster_names(corpus_paths(first.prefix)["clusters"]) if with_clusters else None
        return writer.finalize(meta, names)
    except BaseException:
        writer.abort()
        raise


def run_merge(config: MergeConfig) -> int:
    """``megatron-plm merge-corpora``: the merged corpus, and the files written."""
    files = merge_corpora(config)
    print("wrote " + ", ".join(str(files[name]) for name in sorted(files)))
    return 0

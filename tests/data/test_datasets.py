"""Samples on the shipped corpora: masking statistics, packing, boundaries, sampling, splits, resume."""

import numpy as np
import pytest
import torch

from megatron_plm.data.samples.batch import collate
from megatron_plm.data.samples.builder import DataBuilder, epochs_per_source
from megatron_plm.data.samples.config import DataConfig, DataSource
from megatron_plm.data.corpus import Corpus
from megatron_plm.data.samples.datasets import ProteinDataset, SampleConfig
from megatron_plm.data.samples.loader import BatchLoader
from megatron_plm.data.samples.sampling import STREAM_SAMPLE, DocumentOrder, SamplingUnits, uniform_noise
from megatron_plm.data.samples.splits import Split, assign_splits
from megatron_plm.data.tokenizers.protein import ProteinTokenizer

TOK = ProteinTokenizer()


def dataset(corpus_prefix, **config):
    corpus = Corpus.open(corpus_prefix)
    num_samples = config.pop("num_samples", 2048)
    return ProteinDataset(
        corpus,
        np.arange(len(corpus)),
        config=SampleConfig(**config),
        num_samples=num_samples,
        seed=config.pop("seed", 7),
        split=Split.TRAIN,
        name="test",
    )


def corpus_sequences(prefix):
    indexed = Corpus.open(prefix).indexed_dataset()
    return {TOK.decode(indexed[i]) for i in range(len(indexed))}


def within(count, n, p, sigmas=5.0):
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("packed", [False, True], ids=["single", "packed"])
def test_mlm_masking_statistics(sample_corpus, packed):
    ds = dataset(sample_corpus, objective="mlm", seq_length=256, packed=packed, num_samples=1024)
    selected = residues = as_mask = unchanged = other = could_match = 0
    specials = TOK.special_ids
    for i in range(1024):
        s = ds[i]
        maskable = np.isin(s["labels"], TOK.residue_ids) & (s["segment_ids"] >= 0)
        sel = s["loss_mask"] > 0
        assert not (sel & ~maskable).any(), "a special or padding position was selected"
        assert np.array_equal(s["tokens"][~sel], s["labels"][~sel]), "an unselected position changed"
        assert not np.isin(s["labels"][sel], specials).any()
        residues += int(maskable.sum())
        selected += int(sel.sum())
        tokens, labels = s["tokens"][sel], s["labels"][sel]
        as_mask += int((tokens == TOK.mask).sum())
        unchanged += int((tokens == labels).sum())
        replaced = (tokens != TOK.mask) & (tokens != labels)
        other += int(replaced.sum())
        assert np.isin(tokens[replaced], TOK.standard_amino_acid_ids).all()
        could_match += int(np.isin(labels, TOK.standard_amino_acid_ids).sum())
    assert residues > 100_000
    assert within(selected, residues, 0.15)
    assert within(as_mask, selected, 0.8)
    # A random replacement equals the original with probability 1/20 when the original is standard.
    p_same = 0.1 * (could_match / selected) / 20
    assert within(unchanged, selected, 0.1 + p_same)
    assert within(other, selected, 0.1 - p_same)


def test_mlm_single_protein_samples_are_esm2_crops(sample_corpus):
    ds = dataset(sample_corpus, objective="mlm", seq_length=128, packed=False, num_samples=512)
    sequences = corpus_sequences(sample_corpus)
    long_seen = 0
    for i in range(512):
        s = ds[i]
        real = s["segment_ids"] >= 0
        labels = s["labels"][real]
        assert labels[0] == TOK.cls and labels[-1] == TOK.eos
        body = TOK.decode(labels[1:-1])
        full = TOK.decode(ds.indexed[int(ds.doc_order[i])])
        assert body in full and (len(full) <= 126 and body == full or len(body) == 126)
        long_seen += len(full) > 126
        assert full in sequences
        assert np.all(s["labels"][~real] == TOK.pad) and np.all(s["loss_mask"][~real] == 0)
    assert long_seen > 50  # the crop path ran


def _protein_boundaries(tokens, starts, ends):
    """Boundaries read off the tokens alone: an end marker followed by a start marker."""
    t = np.asarray(tokens)
    return np.flatnonzero(np.isin(t[:-1], ends) & np.isin(t[1:], starts)) + 1


def test_clm_packed_samples_decode_into_framed_proteins(sample_corpus):
    ds = dataset(sample_corpus, objective="clm", seq_length=256, reverse_prob=0.5, num_samples=1024)
    sequences = corpus_sequences(sample_corpus)
    markers = [TOK.n_terminus, TOK.c_terminus]
    reversed_seen = forward_seen = 0
    for i in range(1024):
        s = ds[i]
        assert np.all(s["segment_ids"] >= 0), "CLM packing left padding"
        pieces = np.split(s["tokens"], np.flatnonzero(np.diff(s["segment_ids"])) + 1)
        for k, piece in enumerate(pieces):
            text = TOK.decode(piece)
            interior = text[1:-1]
            assert "1" not in interior and "2" not in interior, text
            if 0 < k < len(pieces) - 1:  # whole proteins, framed 1...2 or 2...reversed...1
                assert {text[0], text[-1]} == {"1", "2"}, text
                body = text[1:-1] if text[0] == "1" else text[-2:0:-1]
                assert body in sequences
                reversed_seen += text[0] == "2"
                forward_seen += text[0] == "1"
            if k > 0:
                assert text[0] in "12"  # a piece after a boundary opens a protein
            if k < len(pieces) - 1:
                assert text[-1] in "12"  # a piece before a boundary closes one
        # Boundaries from the segment ids equal those read off the tokens, positions restart there,
        # and the loss skips exactly the labels that open a new protein.
        expected = _protein_boundaries(s["tokens"], markers, markers)
        assert np.array_equal(np.flatnonzero(np.diff(s["segment_ids"])) + 1, expected)
        assert np.array_equal(s["position_ids"][expected], np.zeros(len(expected)))
        label_opens = np.isin(s["tokens"], markers) & np.isin(s["labels"], markers)
        assert np.array_equal(s["loss_mask"] == 0, label_opens)
    whole = reversed_seen + forward_seen
    assert whole > 150 and within(reversed_seen, whole, 0.5)  # reverse_prob = 0.5


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_packed_samples_tile_the_document_stream(sample_corpus, objective):
    """In index order (before the block shuffle), samples are consecutive slices of the framed
    documents: nothing is lost, repeated or padded."""
    ds = dataset(sample_corpus, objective=objective, seq_length=128, num_samples=1024, reverse_prob=0.0)
    unshuffled = np.argsort(ds.shuffle)
    key = "tokens" if objective == "clm" else "labels"
    stream = np.concatenate([ds[int(unshuffled[j])][key] for j in range(1024)])
    framed = np.concatenate([ds._frame(p) for p in range(len(ds.doc_order))])
    assert np.array_equal(stream, framed[: len(stream)])


def test_batch_attention_matches_the_proteins(sample_corpus):
    for objective, causal, starts, ends in (("clm", True, [33, 34], [33, 34]), ("mlm", False, [TOK.cls], [TOK.eos])):
        ds = dataset(sample_corpus, objective=objective, seq_length=128, num_samples=64)
        samples = [ds[i] for i in range(8)]
        batch = collate(samples, causal=causal)
        mask = np.broadcast_to(batch.attention_mask().numpy(), (8, 1, 128, 128))[:, 0]
        for row, sample in enumerate(samples):
            labels = sample["labels"] if objective == "mlm" else sample["tokens"]
            cuts = _protein_boundaries(labels, starts, ends)
            protein = np.searchsorted(cuts, np.arange(len(labels)), side="right")
            allowed = protein[:, None] == protein[None, :]
            if causal:
                allowed &= np.tril(np.ones_like(allowed))
            assert np.array_equal(~mask[row], allowed | np.eye(len(labels), dtype=bool))
        cu = batch.cu_seqlens.numpy()
        flat = batch.segment_ids.numpy().reshape(-1)
        row_starts = np.arange(0, flat.size, 128)
        expected = np.union1d(np.flatnonzero(np.diff(flat)) + 1, row_starts)
        assert np.array_equal(cu, np.r_[expected, flat.size])


def test_packing_fills_samples(sample_corpus):
    for objective, floor in (("clm", 1.0), ("mlm", 1.0)):
        ds = dataset(sample_corpus, objective=objective, seq_length=1024, num_samples=64)
        real = np.mean([np.mean(ds[i]["segment_ids"] >= 0) for i in range(64)])
        assert real >= floor


def test_cluster_sampling_is_uniform_over_clusters_then_members(sample_corpus):
    corpus = Corpus.open(sample_corpus)
    clusters = np.asarray(corpus.cluster_index())
    units = SamplingUnits.by_cluster(np.arange(len(corpus)), clusters)
    assert units.num_units == 4597
    order = DocumentOrder(units, seed=3)
    epochs = 60
    picks = order.documents(epochs * units.num_units)
    per_cluster = np.bincount(clusters[picks], minlength=clusters.max() + 1)
    assert np.all(per_cluster[np.unique(clusters)] == epochs)  # each cluster once per epoch
    # Within clusters, members are drawn uniformly: chi-square over clusters of >= 10 members.
    import torch

    def chisquare_pvalue(counts):
        expected = counts.mean()
        statistic = ((counts - expected) ** 2 / expected).sum()
        return float(torch.special.gammaincc(torch.tensor((len(counts) - 1) / 2), torch.tensor(statistic / 2)))

    sizes = np.bincount(clusters)
    member_counts = np.bincount(picks, minlength=len(corpus))
    big = np.flatnonzero(sizes >= 10)
    assert len(big) >= 20
    pvalues = [chisquare_pvalue(member_counts[clusters == c].astype(float)) for c in big]
    assert min(pvalues) > 1e-4 and np.mean(np.array(pvalues) < 0.05) < 0.15
    # Sampling documents uniformly instead would favour big clusters by their size.
    doc_order = DocumentOrder(SamplingUnits.uniform(np.arange(len(corpus))), seed=3).documents(len(corpus))
    assert np.bincount(clusters[doc_order]).max() == sizes.max() > 1


def test_splits_are_deterministic_and_keep_clusters_together(sample_corpus, tmp_path, sample_fasta):
    corpus = Corpus.open(sample_corpus)
    splits = assign_splits(corpus, (0.8, 0.1, 0.1))
    clusters = np.asarray(corpus.cluster_index())
    for c in np.unique(clusters):
        assert len(np.unique(splits[clusters == c])) == 1
    fractions = np.bincount(splits, minlength=3) / len(splits)
    assert np.allclose(fractions, (0.8, 0.1, 0.1), atol=0.03)
    # Reproducible from the corpus alone: a corpus of the same sequences in another order, without
    # clusters, splits each sequence by its residues, identically.
    from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess

    shuffled = tmp_path / "shuffled.fasta"
    records = list(zip(corpus.record_ids(), (TOK.decode(corpus.indexed_dataset()[i]) for i in range(len(corpus)))))
    order = np.random.default_rng(0).permutation(len(records))
    shuffled.write_text("".join(f">{records[i][0]}\n{records[i][1]}\n" for i in order))
    preprocess(PreprocessConfig(inputs=[str(shuffled)], output_prefix=str(tmp_path / "shuffled"), progress=False))
    other = Corpus.open(tmp_path / "shuffled")
    by_sequence = dict(zip(corpus.record_ids(), assign_splits(corpus, (0.8, 0.1, 0.1), by_cluster=False)))
    other_splits = assign_splits(other, (0.8, 0.1, 0.1))
    assert all(by_sequence[name] == split for name, split in zip(other.record_ids(), other_splits))


def _global_batch(loaders):
    """The step's batch gathered over data-parallel ranks, in rank order."""
    parts = [mb.tokens for loader in loaders for mb in loader.next_step()]
    return np.concatenate([p.numpy() for p in parts])


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_resume_from_consumed_samples_at_any_dp_size(sample_corpus, objective):
    def build():
        config = DataConfig(sources=[DataSource(prefix=str(sample_corpus))], seq_length=64)
        return DataBuilder(config, objective).build(Split.TRAIN, num_samples=256)

    G, steps, k = 16, 6, 3
    straight = [BatchLoader(build(), G, 2, 0, 1, causal=objective == "clm")]
    expected = [_global_batch(straight) for _ in range(steps)]
    for dp in (1, 2, 4):
        fresh = build()  # rebuilt from scratch, as after a restart
        resumed = [
            BatchLoader(fresh, G, 2, rank, dp, causal=objective == "clm", consumed_samples=k * G) for rank in range(dp)
        ]
        for step in range(k, steps):
            assert np.array_equal(_global_batch(resumed), expected[step]), f"dp={dp} step={step}"
    assert not np.array_equal(expected[0], expected[1])


def test_blend_of_two_sources(sample_corpus, uniprot_corpus):
    config = DataConfig(
        sources=[DataSource(prefix=str(sample_corpus), weight=0.7), DataSource(prefix=str(uniprot_corpus), weight=0.3)],
        packed=False,
        seq_length=128,
    )
    blend = DataBuilder(config, "mlm").build(Split.TRAIN, num_samples=2000)
    ids = np.array([blend[i]["dataset_id"] for i in range(2000)])
    assert abs(np.mean(ids == 0) - 0.7) < 0.01
    epochs = epochs_per_source(blend, 2000)
    assert set(epochs) == {str(sample_corpus), str(uniprot_corpus)}
    units = [part.order.units.num_units for part in blend.datasets]
    assert epochs[str(sample_corpus)] == pytest.approx(np.sum(ids == 0) / units[0])
    valid = DataBuilder(config, "mlm").build(Split.VALID, num_samples=100)
    train_docs = {(k, int(d)) for k, part in enumerate(blend.datasets) for d in part.order.units.documents}
    valid_docs = {(k, int(d)) for k, part in enumerate(valid.datasets) for d in part.order.units.documents}
    assert train_docs.isdisjoint(valid_docs)


@pytest.mark.parametrize("objective, packed", [("clm", True), ("mlm", True), ("mlm", False)])
def test_batched_samples_equal_single_samples(sample_corpus, objective, packed):
    ds = dataset(
        sample_corpus,
        objective=objective,
        packed=packed,
        seq_length=128,
        num_samples=256,
        reverse_prob=0.5 if objective == "clm" else 0.0,
    )
    indices = np.array([5, 0, 77, 200, 5, 131])
    batched = ds.samples(indices)
    for row, index in enumerate(indices):
        single = ds[int(index)]
        for key, value in single.items():
            assert np.array_equal(batched[key][row], value), (key, index)
    assert not np.array_equal(batched["tokens"][0], batched["tokens"][1])


def test_single_protein_mlm_uses_a_key_padding_mask(sample_corpus):
    ds = dataset(sample_corpus, objective="mlm", packed=False, seq_length=128, num_samples=64)
    batch = collate([ds[i] for i in range(4)], causal=False)
    mask = batch.attention_mask()
    assert mask.shape == (4, 1, 1, 128)
    assert np.array_equal(~mask[:, 0, 0].numpy(), batch.segment_ids.numpy() >= 0)


def _windows_one_document_at_a_time(ds, indices):
    """The per-document reading the vectorised gather replaced: each protein framed by ``_frame``
    (megatron-core's ``IndexedDataset``, one call per document) and copied into its row."""
    width = ds.config.seq_length + ds._extra
    windows, segments = [], []
    for index in indices:
        sample = int(ds.shuffle[index])
        (first, first_offset), (last, last_offset) = ds.sample_index[sample], ds.sample_index[sample + 1]
        row, ids = [], []
        for segment, position in enumerate(range(int(first), int(last) + 1)):
            framed = ds._frame(position)
            start = int(first_offset) if position == first else 0
            stop = int(last_offset) + ds._extra if position == last else len(framed)
            row.append(framed[start:stop])
            ids.append(np.full(stop - start, segment))
        windows.append(np.concatenate(row))
        segments.append(np.concatenate(ids))
        assert len(windows[-1]) == width
    return np.stack(windows), np.stack(segments)


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_packed_gather_equals_framing_each_document(sample_corpus, objective):
    ds = dataset(
        sample_corpus, objective=objective, seq_length=96, num_samples=512, reverse_prob=0.5 * (objective == "clm")
    )
    indices = np.random.default_rng(0).permutation(512)[:200]
    windows, segments = ds._packed_windows(indices)
    expected_windows, expected_segments = _windows_one_document_at_a_time(ds, indices)
    assert np.array_equal(windows, expected_windows)
    assert np.array_equal(segments, expected_segments)
    if objective == "clm":
        assert ds.reversed[: ds.sample_index[512][0]].mean() == pytest.approx(0.5, abs=0.1)


def test_single_protein_gather_equals_cropping_each_document(sample_corpus):
    """The ESM-2 crops read with one gather equal the crops cut from each protein in turn."""
    ds = dataset(sample_corpus, objective="mlm", packed=False, seq_length=100, num_samples=512)
    indices = np.arange(512)
    windows, segments = ds._single_protein_windows(indices)
    starts = np.zeros(len(indices), dtype=np.int64)
    lengths = ds.residue_lengths[ds.doc_order[indices]].astype(np.int64)
    long = lengths > 98
    starts[long] = (uniform_noise(ds.seed, STREAM_SAMPLE, indices[long]) * (lengths[long] - 98 + 1)).astype(np.int64)
    for row, index in enumerate(indices):
        piece = np.asarray(ds.indexed[int(ds.doc_order[index])], dtype=np.int64)[starts[row] : starts[row] + 98]
        expected = np.full(100, TOK.pad)
        expected[: len(piece) + 2] = TOK.frame_mlm(piece)
        assert np.array_equal(windows[row], expected)
        assert np.array_equal(segments[row], np.where(np.arange(100) < len(piece) + 2, 0, -1))
    assert (starts > 0).sum() > 50  # the crop path ran


def test_read_ahead_reads_each_ranks_next_step_and_changes_no_batch(sample_corpus):
    ds = dataset(sample_corpus, objective="mlm", seq_length=128, num_samples=64)
    reads = []
    read = ds.read
    ds.read = lambda indices: (reads.append(np.asarray(indices).tolist()), read(indices))[1]
    # rank 1 of 2, microbatches of 4: samples 8-15 of each step of 16, from a loader that reads ahead
    # and one that does not (on a dataset of its own)
    ahead = BatchLoader(ds, 16, 4, 1, 2, causal=False)
    plain_ds = dataset(sample_corpus, objective="mlm", seq_length=128, num_samples=64)
    plain = BatchLoader(plain_ds, 16, 4, 1, 2, causal=False, read_ahead=False)
    for step in range(4):
        for a, b in zip(ahead.next_step(), plain.next_step()):
            for key in ("tokens", "labels", "loss_mask", "position_ids", "segment_ids"):
                assert torch.equal(getattr(a, key), getattr(b, key)), key
        if step < 3:
            ahead._ahead[1].result()  # the next step, read ahead by microbatch
            next_rows = 16 * (step + 1) + 8
            assert reads[-2:] == [list(range(next_rows, next_rows + 4)), list(range(next_rows + 4, next_rows + 8))]
    assert ahead._ahead is None  # nothing read past the end of the dataset
    assert len(reads) == 8  # every microbatch read once: the first step's inline, the rest ahead


def test_cluster_units_equal_a_plain_stable_sort(sample_corpus):
    """The block-filled int32 sort keys give the units an int64 stable sort of the cluster ids gives,
    unclustered documents (-1) each a unit of their own after every cluster."""
    clusters = np.asarray(Corpus.open(sample_corpus).cluster_index())
    rng = np.random.default_rng(5)
    documents = np.sort(rng.choice(len(clusters), 6000, replace=False))
    clusters = clusters.copy()
    clusters[rng.choice(len(clusters), 300, replace=False)] = -1  # some documents outside the mapping
    units = SamplingUnits.by_cluster(documents, clusters)
    keys = clusters[documents].astype(np.int64)
    keys[keys < 0] = keys.max() + 1 + np.arange(int((keys < 0).sum()))
    order = np.argsort(keys, kind="stable")
    assert np.array_equal(units.documents, documents[order]) and units.documents.dtype == np.int64
    starts = np.flatnonzero(np.r_[True, np.diff(keys[order]) != 0])
    assert np.array_equal(units.unit_starts, np.r_[starts, len(documents)])
    assert units.num_units == len(np.unique(clusters[documents][clusters[documents] >= 0])) + int(
        (clusters[documents] < 0).sum()
    )

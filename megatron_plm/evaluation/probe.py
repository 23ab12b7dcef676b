"""Linear secondary-structure probes on frozen per-residue embeddings (the paper's structure axis).

Data: a TSV of chains with DSSP 8-state labels per residue (``index, sequence, ss8``; 8 states
``H G I E B T S ~``, ``~`` = coil); 3 states map H, G, I -> H; E, B -> E; the rest -> C. Chains are
split into train and test by a hash of the sequence, so no chain -- and no identical sequence
under two indices -- is in both. One multinomial logistic regression per task (L-BFGS on
standardised features, a little L2), trained on the train chains' residues and scored as
accuracy (Q3, Q8) on the test chains'. The baseline is the same probe on the one-hot residue
identities of a window around each residue: what a model must beat to show it encodes structure
beyond local sequence.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from megatron_plm.data.preprocess.fasta import InputFormatError
from megatron_plm.data.tokenizers.protein import ProteinTokenizer
from megatron_plm.evaluation.embed import embed
from megatron_plm.evaluation.model import ModelTask, ScoringModel
from megatron_plm.progress import track
from megatron_plm.shipped_data import SECONDARY_STRUCTURE, data_path

SS8 = "HGIEBTS~"
SS3_OF_SS8 = {"H": "H", "G": "H", "I": "H", "E": "E", "B": "E", "T": "C", "S": "C", "~": "C"}
SS3 = "HEC"
_LETTERS = "ACDEFGHIKLMNPQRSTVWY"


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    data: str
    """TSV (optionally gzip) with columns index, sequence, ss8."""
    chains: int = 400
    """The first this many chains (after the length filter)."""
    max_length: int = 1000
    """Skip longer chains (bounds the embedding time)."""
    layer: int = -1
    """Hidden layer probed (-1: the final output)."""
    window: int = 7
    """Baseline: residues on either side whose identities it sees."""
    test_fraction: float = 0.2
    """Share of chains held out for Q3/Q8."""
    l2: float = 1e-3
    """L2 penalty of the logistic-regression probes."""
    seed: int = 0
    """Seed of the train/test split of chains."""


@dataclass(frozen=True, kw_only=True)
class ProbeTask(ProbeConfig, ModelTask):
    """``megatron-plm evaluate probe``: a linear secondary-structure probe on frozen embeddings."""

    data: Path = field(default_factory=lambda: data_path(SECONDARY_STRUCTURE))
    """TSV: index, sequence, ss8 (DSSP 8-state; default: the shipped Porter6 sample)."""


@dataclass
class Chain:
    index: str
    sequence: str
    ss8: str


def load_chains(path: str, limit: int, max_length: int) -> list[Chain]:
    opener = gzip.open if str(path).endswith(".gz") else open
    chains = []
    with opener(path, "rt") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if header[:3] != ["index", "sequence", "ss8"]:
            raise InputFormatError(path, 1, f"expected columns index, sequence, ss8; got {header}")
        for line_number, line in enumerate(handle, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise InputFormatError(path, line_number, f"expected 3 tab-separated fields, got {len(fields)}")
            index, sequence, ss8 = fields
            if len(sequence) != len(ss8):
                raise InputFormatError(
                    path, line_number, f"sequence has {len(sequence)} residues but ss8 has {len(ss8)} labels", index
                )
            bad = set(ss8) - set(SS8)
            if bad:
                raise InputFormatError(path, line_number, f"unknown DSSP labels {sorted(bad)}", index)
            if len(sequence) <= max_length:
                chains.append(Chain(index, sequence, ss8))
            if len(chains) == limit:
                break
    if not chains:
        raise InputFormatError(path, None, "no chains")
    return chains


def split_chains(chains: list[Chain], test_fraction: float) -> np.ndarray:
    """True for test chains: by a hash of the sequence, so duplicates land together."""
    hashes = [int.from_bytes(hashlib.blake2b(c.sequence.encode(), digest_size=8).digest(), "little") for c in chains]
    return np.array([h / 2**64 < test_fraction for h in hashes])


def window_features(sequence: str, window: int) -> np.ndarray:
    """``[residues, (2 window + 1) x 21]`` one-hot identities around each residue (21st: other/none)."""
    codes = np.array([_LETTERS.find(a) if a in _LETTERS else 20 for a in sequence])
    padded = np.r_[np.full(window, 20), codes, np.full(window, 20)]
    out = np.zeros((len(sequence), 2 * window + 1, 21), dtype=np.float32)
    for offset in range(2 * window + 1):
        out[np.arange(len(sequence)), offset, padded[offset : offset + len(sequence)]] = 1.0
    return out.reshape(len(sequence), -1)


def fit_linear_probe(x: np.ndarray, y: np.ndarray, classes: int, l2: float, seed: int) -> torch.nn.Linear:
    """Multinomial logistic regression by L-BFGS on standardised features."""
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    probe = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(
        probe.parameters(), lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(xt), yt) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def probe_accuracy(train_x, train_y, test_x, test_y, classes: int, l2: float, seed: int) -> float:
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    probe = fit_linear_probe((train_x - mean) / std, train_y, classes, l2, seed)
    with torch.no_grad():
        predicted = probe(torch.from_numpy((test_x - mean) / std)).argmax(-1).numpy()
    return float((predicted == test_y).mean())


@dataclass
class ProbeResult:
    train_chains: int
    test_chains: int
    train_residues: int
    test_residues: int
    layer: int
    q3: float
    q8: float
    baseline_q3: float
    baseline_q8: float
    window: int


def run_probe(model: ScoringModel, config: ProbeConfig, *, show_progress: bool = False) -> ProbeResult:
    for name in ("chains", "max_length"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if not 0 < config.test_fraction < 1:
        raise ValueError(f"--test-fraction must be between 0 and 1, got {config.test_fraction}")
    if config.window < 0:
        raise ValueError(f"--window must be >= 0, got {config.window}")
    chains = load_chains(config.data, config.chains, config.max_length)
    test = split_chains(chains, config.test_fraction)
    if test.all() or not test.any():
        raise ValueError(f"{len(chains)} chains give an empty train or test split; use more --chains")
    tok = ProteinTokenizer()
    records = [(c.index, tok.encode(c.sequence).astype(np.int64)) for c in chains]
    embeddings = embed(model, records, layers=[config.layer], pool="per-token", show_progress=show_progress)
    ((layer, features),) = embeddings.layers.items()
    per_chain = np.split(features, embeddings.offsets[1:-1])
    baseline = [window_features(c.sequence, config.window) for c in chains]
    y8 = [np.array([SS8.index(s) for s in c.ss8]) for c in chains]
    y3 = [np.array([SS3.index(SS3_OF_SS8[s]) for s in c.ss8]) for c in chains]

    def stack(parts, chosen):
        return np.concatenate([p for p, t in zip(parts, test) if t == chosen])

    scores = {}
    fits = [
        (name, x, task, y, classes)
        for name, x in (("model", per_chain), ("baseline", baseline))
        for task, y, classes in (("q3", y3, 3), ("q8", y8, 8))
    ]
    for name, x, task, y, classes in track(fits, "probe fits", unit="fits", enabled=show_progress):
        scores[name, task] = probe_accuracy(
            stack(x, False), stack(y, False), stack(x, True), stack(y, True), classes, config.l2, config.seed
        )
    return ProbeResult(
        train_chains=int((~test).sum()),
        test_chains=int(test.sum()),
        train_residues=sum(len(c.sequence) for c, t in zip(chains, test) if not t),
        test_residues=sum(len(c.sequence) for c, t in zip(chains, test) if t),
        layer=layer,
        q3=scores["model", "q3"],
        q8=scores["model", "q8"],
        baseline_q3=scores["baseline", "q3"],
        baseline_q8=scores["baseline", "q8"],
        window=config.window,
    )


def format_probe(result: ProbeResult, model_name: str) -> str:
    return "\n".join(
        [
            f"secondary-structure probe of {model_name} (layer {result.layer}): {result.train_chains} train chains "
            f"({result.train_residues:,} residues), {result.test_chains} test chains ({result.test_residues:,} residues)",
            f"  linear probe on embeddings   Q3 {result.q3:.3f}  Q8 {result.q8:.3f}",
            f"  residue-window baseline (±{result.window})  Q3 {result.baseline_q3:.3f}  Q8 {result.baseline_q8:.3f}",
        ]
    )

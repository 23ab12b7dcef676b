"""A Pfam-style *domain* alignment of the TEM-1 family, made with HMMER from the shipped homologs, for
testing the family workflow on the kind of alignment users bring (issue 33).

What makes it Pfam-like, and what the ColabFold a3m is not: a profile HMM of one domain (match columns
41-270 of the a3m: the signal peptide and the ends left out), searched against the homologs' sequences
with ``hmmsearch``; each hit's envelope (a domain fragment, named ``ID/start-end`` as Pfam names them)
aligned to the HMM with ``hmmalign``; written as Stockholm with a ``#=GC RF`` line, insertions in lower
case and ``.``; and TEM-1 itself left out (the first record, and every fragment found in it). The
domain boundaries are this script's choice, not Pfam's (PF13354's are not available offline).

    python examples/family/domain_alignment.py data/family/BLAT_ECOLX_ColabFold_2202.a3m OUT.sto
"""

from __future__ import annotations

import argparse
import io

import pyhmmer
from pyhmmer.easel import Alphabet, TextMSA, TextSequence
from pyhmmer.plan7 import Background, Builder

from megatron_plm.data.preprocess.msa import read_msa
from megatron_plm.outputs import write_text_atomic


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else name


def domain_alignment(a3m: str, first: int = 40, last: int = 270, evalue: float = 1e-10) -> tuple[str, dict]:
    alignment = read_msa(a3m, "a3m")
    amino = Alphabet.amino()
    target = alignment.query
    target_protein = target
    rows = [
        TextSequence(name=str(i).encode(), sequence=r[first:last].tobytes().decode())
        for i, r in enumerate(alignment.columns)
    ]
    msa = TextMSA(name=b"BLAT_domain", sequences=rows)
    msa.reference = "x" * (last - first)
    hmm, _, _ = Builder(amino, architecture="hand").build_msa(msa.digitize(amino), Background(amino))
    seen, homologs = set(), []
    for record_id, row in zip(alignment.ids[1:], alignment.rows[1:]):  # the target (first record) left out
        sequence = row.decode().replace("-", "").replace(".", "").upper()
        if sequence == target or record_id in seen:
            continue
        seen.add(record_id)
        homologs.append(TextSequence(name=record_id.encode(), sequence=sequence).digitize(amino))
    fragments = []
    by_name = {_text(s.name): s for s in homologs}
    for hit in next(iter(pyhmmer.hmmer.hmmsearch([hmm], homologs, E=evalue, domE=evalue))):
        text = by_name[_text(hit.name)].textize().sequence
        for domain in hit.domains.included:
            start, end = domain.env_from, domain.env_to  # 1-based, inclusive
            if text[start - 1 : end] in target_protein:  # TEM-1's own domain, under another id: left out
                continue
            name = f"{_text(hit.name)}/{start}-{end}"
            fragments.append(TextSequence(name=name.encode(), sequence=text[start - 1 : end]).digitize(amino))
    aligned = pyhmmer.hmmer.hmmalign(hmm, fragments, trim=True)
    buffer = io.BytesIO()
    aligned.write(buffer, "stockholm")
    counts = {"homologs searched": len(homologs), "domain fragments": len(fragments), "match columns": last - first}
    return buffer.getvalue().decode(), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a3m")
    parser.add_argument("output")
    parser.add_argument("--evalue", type=float, default=1e-10, help="hmmsearch E-value (sequence and domain)")
    args = parser.parse_args()
    text, counts = domain_alignment(args.a3m, evalue=args.evalue)
    write_text_atomic(args.output, text)
    print(f"wrote {args.output} (pyhmmer {pyhmmer.__version__}): " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))


if __name__ == "__main__":
    main()

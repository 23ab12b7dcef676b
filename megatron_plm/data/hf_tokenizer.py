"""Write our tokenizer as files ``transformers.AutoTokenizer`` loads with no custom code.

- MLM: ESM-2's ``vocab.txt`` through ``transformers.EsmTokenizer`` itself, so an MLM export
  pairs with ``EsmForMaskedLM`` exactly as ESM-2 checkpoints do (``<cls> ... <eos>``).
- CLM: a ``tokenizer.json`` (HF ``tokenizers``: one token per residue, lower case mapped to
  upper case, trailing ``*`` dropped) wrapped as ``PreTrainedTokenizerFast``, framing each
  sequence ``1 ... 2`` as ProGen2 does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from megatron_plm.data.tokenizer import ESM2_VOCAB, RESIDUES, VOCAB, ProteinTokenizer

Objective = Literal["mlm", "clm"]


def _mlm_tokenizer(model_max_length: int):
    from transformers import EsmTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        vocab_file = Path(scratch) / "vocab.txt"
        vocab_file.write_text("".join(f"{token}\n" for token in ESM2_VOCAB))
        return EsmTokenizer(str(vocab_file), model_max_length=model_max_length)


def _clm_tokenizer(model_max_length: int):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ours = ProteinTokenizer()
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(VOCAB)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"\*+$"), "")] + [normalizers.Replace(letter.lower(), letter) for letter in RESIDUES]
    )
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(
        single="1 $A 2",
        special_tokens=[("1", ours.n_terminus), ("2", ours.c_terminus)],
    )
    specials = [t for t in VOCAB if t not in RESIDUES]
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="1",
        eos_token="2",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<cls>",
        model_max_length=model_max_length,
    )


def _subword_tokenizer(subword, objective: Objective, model_max_length: int):
    """A subword vocabulary (``megatron_plm.data.subword``) framed as the objective's datasets frame it."""
    import copy

    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(subword.backend)
    first, last = ("<cls>", "<eos>") if objective == "mlm" else ("1", "2")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}",
        special_tokens=[(first, subword.token_to_id(first)), (last, subword.token_to_id(last))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=first if objective == "clm" else None,
        eos_token=last,
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<cls>",
        model_max_length=model_max_length,
    )


def save_hf_tokenizer(
    directory: str | os.PathLike, objective: Objective, *, model_max_length: int = 1024, subword=None
) -> Path:
    """Write tokenizer files for ``objective`` into ``directory`` (created if needed); ``subword``: a
    :class:`~megatron_plm.data.subword.SubwordTokenizer` the model was trained with."""
    if objective not in ("mlm", "clm"):
        raise ValueError(f"objective must be 'mlm' or 'clm', got {objective!r}")
    if subword is not None:
        tokenizer = _subword_tokenizer(subword, objective, model_max_length)
    else:
        tokenizer = (_mlm_tokenizer if objective == "mlm" else _clm_tokenizer)(model_max_length)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory

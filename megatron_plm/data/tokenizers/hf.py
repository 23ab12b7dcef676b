"""Write our tokenizer as files ``transformers.AutoTokenizer`` loads with no custom code.

- MLM: ESM-2's ``vocab.txt`` through ``transformers.EsmTokenizer`` itself, so an MLM export
  pairs with ``EsmForMaskedLM`` exactly as ESM-2 checkpoints do (``<cls> ... <eos>``).
- CLM: a ``tokenizer.json`` (HF ``tokenizers``: one token per residue, lower case mapped to
  upper case, trailing ``*`` dropped) wrapped as ``PreTrainedTokenizerFast``. Text is a prompt:
  it encodes as ``1 M K T ...`` (the N-terminus only, so ``generate`` continues the protein) and
  ``2`` (``eos_token``) is where generation stops; to score a whole protein, write the ``2``
  (``tokenizer("MKT2")``: the markers are special tokens, matched in text). Decoding joins residues
  without spaces.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from megatron_plm.data.tokenizers.protein import ESM2_VOCAB, RESIDUES, VOCAB, ProteinTokenizer

Objective = Literal["mlm", "clm"]


def _mlm_tokenizer(model_max_length: int):
    from transformers import EsmTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        vocab_file = Path(scratch) / "vocab.txt"
        vocab_file.write_text("".join(f"{token}\n" for token in ESM2_VOCAB))
        return EsmTokenizer(str(vocab_file), model_max_length=model_max_length)


def _clm_tokenizer(model_max_length: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ours = ProteinTokenizer()
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(VOCAB)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"\*+$"), "")] + [normalizers.Replace(letter.lower(), letter) for letter in RESIDUES]
    )
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(
        single="1 $A", pair="1 $A 1 $B:1", special_tokens=[("1", ours.n_terminus)]
    )
    backend.decoder = decoders.Fuse()  # residues join without spaces
    specials = [t for t in VOCAB if t not in RESIDUES]
    backend.add_special_tokens(specials)
    return _fast_tokenizer(backend, bos_token="1", eos_token="2", model_max_length=model_max_length)


def _fast_tokenizer(backend, *, bos_token: str | None, eos_token: str, model_max_length: int):
    """``backend`` as ``transformers``' generic fast tokenizer; the framing is the backend's post-processor."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<cls>",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def _subword_tokenizer(subword, objective: Objective, model_max_length: int):
    """A subword vocabulary (``megatron_plm.data.tokenizers.subword``) framed as the objective's datasets frame it
    (a CLM's text is a prompt, as for residues: ``1 ...`` with no closing ``2``)."""
    import copy

    from tokenizers import processors

    backend = copy.deepcopy(subword.backend)
    first, last = ("<cls>", "<eos>") if objective == "mlm" else ("1", "2")
    single = f"{first} $A {last}" if objective == "mlm" else f"{first} $A"
    backend.post_processor = processors.TemplateProcessing(
        single=single,
        special_tokens=[(first, subword.token_to_id(first)), (last, subword.token_to_id(last))],
    )
    return _fast_tokenizer(
        backend, bos_token=first if objective == "clm" else None, eos_token=last, model_max_length=model_max_length
    )


def save_hf_tokenizer(
    directory: str | os.PathLike, objective: Objective, *, model_max_length: int = 1024, subword=None
) -> Path:
    """Write tokenizer files for ``objective`` into ``directory`` (created if needed); ``subword``: a
    :class:`~megatron_plm.data.tokenizers.subword.SubwordTokenizer` the model was trained with."""
    if objective not in ("mlm", "clm"):
        raise ValueError(f"objective must be 'mlm' or 'clm', got {objective!r}")
    if subword is not None:
        tokenizer = _subword_tokenizer(subword, objective, model_max_length)
    else:
        tokenizer = (_mlm_tokenizer if objective == "mlm" else _clm_tokenizer)(model_max_length)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    if subword is not None or objective == "clm":
        # transformers 5.x names its fast-tokenizer class TokenizersBackend, which 4.x does not know; the
        # name both load (5.x keeps it as an alias) is PreTrainedTokenizerFast. Without model_input_names,
        # 4.x also returns token_type_ids, which GPT-NeoX's generate refuses.
        config_file = directory / "tokenizer_config.json"
        config = json.loads(config_file.read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config["model_input_names"] = ["input_ids", "attention_mask"]  # 4.x's default adds token_type_ids
        config_file.write_text(json.dumps(config, indent=2) + "\n")
    return directory

"""megatron_plm: protein language model pretraining on megatron-core.

Importing the package imports neither torch nor megatron-core, and installs no CPU runtime
(:func:`megatron_plm.runtime.distributed.initialize` does that). Its one effect is a hook on the first import
of megatron-core that defers ``torch.compile``'s import cost to the first compiled call
(:mod:`megatron_plm.lazy_compile`).
"""

from megatron_plm import lazy_compile

lazy_compile.install()

__version__ = "0.1.0"

"""megatron_plm: protein language model pretraining on megatron-core.

Importing the package has no side effects: megatron-core is imported, and the CPU
runtime installed, only by :func:`megatron_plm.runtime.initialize`.
"""

__version__ = "0.1.0"

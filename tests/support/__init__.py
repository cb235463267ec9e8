"""Code the tests and benchmarks share (in the checkout only; not installed, imports no test module).

- ``tiny_towers``: tiny random converted towers and puzzle-like sentences (torch-free).
- ``hf``: random-init Hugging Face checkpoints written with transformers (PyTorch), released tower configs,
  sample images.
- ``torch_port``: PyTorch ports of the SMARTER and baseline heads in the reference's layout.
- ``reasoner``, ``baseline``: small head configs and random batches for the SMARTER and baseline heads.
- ``runs``: the small trainer runs (configs, log and feature readers, a checkpoint wait, the members).
- ``data``: picklable resizer/tokenizer stand-ins and pixel checks for the synthetic pictures.
- ``reference_reader``: the reference's SMART-101 reader, transcribed.
- ``summary``: reading a run's closing summary back.

Fixtures stay in the ``conftest.py`` files, where pytest finds them.
"""

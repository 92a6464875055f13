"""Stage 2, training: the per-worker loop (``loop``), one FlowGMM step (``step``), the GPU fast path
(``fastpath``), checkpoint state (``state``), validation during training (``validate``), the model spec
(``model``) and the ``TorchTrainer`` that runs the loop (``trainer``).

Imports ``pipeline.core``, ``pipeline.config`` and ``pipeline.data``; never results or Tune.
"""

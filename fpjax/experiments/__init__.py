"""The papers' experiments, the ablation and the score-FPE experiment (``fpjax experiment``)."""

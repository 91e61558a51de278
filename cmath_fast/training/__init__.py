"""Training, evaluation and prediction: options, splits, metrics, checkpoints, the loop, plots.

- ``options``: TrainOptions and the selection texts
- ``protocol``: the cmath-fast and lineage protocols (what a run changes to match a table)
- ``configure``: the model config for a data set; checking a checkpoint against data
- ``splits``: train / selection / test ids
- ``evaluation``: prediction and scikit-learn metrics
- ``checkpoints``: safetensors checkpoints, loading a model
- ``loop``: ``train`` and ``train_one`` (the run folder, resume)
- ``plots``: curves and confusion matrix
The step itself (forward, loss, backward, optimiser) is ``cmath_fast.step.train_step``.
"""

from ..step import train_step
from .checkpoints import load_model, resolve_checkpoint, save_model
from .configure import check_data_matches, config_for_data, preset_for
from .evaluation import evaluate_model, metrics_from, predict_dialogues, public
from .loop import train, train_one
from .options import SELECTION_TEXT, TrainOptions
from .protocol import PROTOCOLS, apply_protocol, protocol_label
from .splits import selection_split

__all__ = ["TrainOptions", "SELECTION_TEXT", "config_for_data", "check_data_matches", "preset_for",
           "selection_split", "PROTOCOLS", "apply_protocol", "protocol_label", "metrics_from", "predict_dialogues", "evaluate_model", "public",
           "save_model", "load_model", "resolve_checkpoint", "train", "train_one", "train_step"]

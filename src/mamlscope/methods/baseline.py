"""Standard supervised training, evaluated by fitting a fresh N-way head on each episode's
support set on top of the frozen body (Chen et al. 2019's "Baseline")."""

from mamlscope.methods.base import FINETUNE_EVAL_KEYS, STANDARD_TRAIN_KEYS, Method

METHOD = Method(
    name="baseline",
    label="baseline",
    position=0,
    description="standard supervised training, then a fresh head fine-tuned per episode",
    training="standard",
    order=None,
    adapts="head",
    evaluation="finetune",
    train_keys=STANDARD_TRAIN_KEYS,
    evaluate_keys=FINETUNE_EVAL_KEYS,
    batchnorm="running",
    plain_accuracy=True,
    cka_reference=True,
)

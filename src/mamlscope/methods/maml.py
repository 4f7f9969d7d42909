"""MAML with the exact second-order meta-gradient (Finn, Abbeel & Levine 2017)."""

from mamlscope.methods.base import Method

METHOD = Method(
    name="maml",
    label="maml",
    position=10,
    description="exact second-order MAML: every parameter adapts in the inner loop",
    order="second",
)

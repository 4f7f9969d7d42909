"""BOIL, "body only (update) in inner loop" (Oh et al. 2021, "BOIL: Towards representation
change for few-shot learning"): MAML whose inner loop adapts only the body, the head kept
at its meta-learned weights, so adaptation must change the representation; second order."""

from mamlscope.methods.base import Method

METHOD = Method(
    name="boil",
    label="boil",
    position=50,
    description="BOIL: second-order MAML whose inner loop adapts only the body, head frozen",
    order="second",
    adapts="body",
)

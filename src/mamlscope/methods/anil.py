"""ANIL, "almost no inner loop" (Raghu et al. 2020, "Rapid learning or feature reuse?"):
MAML whose inner loop adapts only the head; the outer loop still meta-learns every
parameter (exact second-order meta-gradient), so the body learns features the head reuses."""

from mamlscope.methods.base import Method

METHOD = Method(
    name="anil",
    label="anil",
    position=40,
    description="ANIL: second-order MAML whose inner loop adapts only the head",
    order="second",
    adapts="head",
)

"""First-order MAML: the meta-gradient drops the inner loop's second derivatives (Finn et
al. 2017, section 5.2)."""

from mamlscope.methods.base import Method

METHOD = Method(
    name="fomaml",
    label="fomaml",
    position=20,
    description="first-order MAML: the query gradient at the adapted weights",
    order="first",
)

"""MAML whose Hessian-vector products are central finite differences of support gradients
(`maml.fd_epsilon`), with ReLU and max-pool gates held (:mod:`mamlscope.gates`)."""

from mamlscope.methods.base import META_TRAIN_KEYS, Method

METHOD = Method(
    name="maml-fd",
    label="maml-fd",
    position=30,
    description="MAML with the Hessian-vector product by central finite differences",
    order="finite-difference",
    train_keys=(*META_TRAIN_KEYS, "maml.fd_epsilon"),
)

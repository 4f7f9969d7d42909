"""The methods this project compares, one module each, and the table every consumer reads.

Each module of this package that defines ``METHOD = Method(...)``
(:class:`~mamlscope.methods.base.Method`) is a method; :func:`method_names` lists them in
display order, :func:`method` looks one up. Adding a method is adding one such module, or,
without editing mamlscope, declaring an entry point in a package of your own::

    [project.entry-points."mamlscope.methods"]
    my-method = "my_package.my_method:METHOD"

Training, evaluation, the config check, the CLI, the feature studies and the report then
run it like the built-in ones.
"""

from mamlscope.methods.base import Method
from mamlscope.methods.registry import (
    clear,
    label,
    method,
    method_names,
    ordered,
    rank,
    registry,
)

__all__ = ["Method", "clear", "label", "method", "method_names", "ordered", "rank", "registry"]

"""Shape-annotated array types: ``Float[Array, "c d"]`` names an array's dtype kind and axes.

The annotations are documentation only (``typing.Annotated`` over ``jax.Array``), so the
package needs no typing dependency beyond jax.
"""

from __future__ import annotations

from typing import Annotated

from jax import Array


class _Kind:
    def __init__(self, kind: str):
        self.kind = kind

    def __getitem__(self, item):
        array_type, axes = item
        return Annotated[array_type, f"{self.kind}[{axes}]"]


Float = _Kind("float")
Int = _Kind("int")
Bool = _Kind("bool")

__all__ = ["Array", "Float", "Int", "Bool"]

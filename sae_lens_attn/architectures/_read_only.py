"""Read-only tensors for computed views such as a block-diagonal SAE's dense `W_enc`.

A dense view is built from the blocks on each access, so writing into it (`.data = X`,
`.copy_(X)`, `W[0] = 0`, any in-place op) would change a temporary copy and leave the SAE
as it was, silently. `read_only_view` returns the same values as a tensor that refuses
such writes with an error naming the parameter to write instead. Results of ordinary
operations on it are plain tensors.

It subclasses `nn.Parameter` only so that `torch.testing.assert_close(view, parameter)`
accepts the pair (it requires one input's type to be an instance of the other's); it is
never registered on a module and stays out of `parameters()`.
"""

from __future__ import annotations

from typing import Any

import torch

_WRITES = {"__setitem__", "__set__", "set_", "requires_grad_"} | {
    f"__i{op}__" for op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow",
                            "and", "or", "xor", "lshift", "rshift")
}


class ReadOnlyView(torch.nn.Parameter):
    """A tensor whose in-place writes raise; `target` names what to write instead."""

    target: str = "the underlying parameter"

    def __repr__(self, **kwargs: Any) -> str:
        return f"read-only view of {self.target}: {self.as_subclass(torch.Tensor)!r}"

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        view = args[0] if args and isinstance(args[0], cls) else None
        if view is not None and (name in _WRITES or (name.endswith("_") and not name.startswith("_"))):
            raise RuntimeError(
                f"this tensor is a read-only dense view computed from {view.target}: writing "
                f"into it ({name}) would change nothing; write into {view.target} instead"
            )
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
        if view is not None and name == "__get__" and getattr(func, "__self__", None) is _DATA:
            return read_only_view(result, view.target)  # `.data` stays read-only
        return result


_DATA = torch.Tensor.data


def read_only_view(tensor: torch.Tensor, target: str) -> ReadOnlyView:
    """`tensor`'s values (autograd history kept) as a `ReadOnlyView` pointing to `target`."""
    view = tensor.as_subclass(ReadOnlyView)
    view.target = target
    return view

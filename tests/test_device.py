"""Device hygiene without a GPU: matrices never leave the models' device.

* On the ``meta`` device (shapes without data: any attempt to read a value, ``.item()``,
  ``bool()``, raises), a ``TorchFunctionMode`` records every tensor torch returns; a tensor on
  another device means tnsim created a host tensor (on a GPU: a blocking copy).
* On the CPU, the host conversions (``item``, ``tolist``, ``numpy``, ``cpu``, ``bool``,
  ``float``, ``int``) are made to raise while blocks are computed.
"""

import pytest
import torch
from torch.overrides import TorchFunctionMode

import tnsim
from tnsim.methods import _matrix as matrix
from models import bilinear, residual_stack, stack2


class OffDevice(TorchFunctionMode):
    """Collect ``function @ tnsim-file:line`` for every tensor returned off ``device``."""

    def __init__(self, device):
        super().__init__()
        self.device = torch.device(device)
        self.found = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor) and x.device != self.device:
                import traceback

                where = [f for f in traceback.extract_stack()[:-1] if "tnsim" in f.filename]
                self.found.add(f"{getattr(func, '__name__', func)} @ {where[-1].filename}:{where[-1].lineno}")
        return out


@pytest.mark.parametrize("measure", ["tensor", "gaussian", "centred"])
@pytest.mark.parametrize("method", ["exact", "recursive"])
def test_matrix_on_meta_device_creates_nothing_off_device(measure, method):
    make = bilinear if method == "exact" and measure != "tensor" else stack2  # fewer orbits
    nets = [tnsim.compile(make(bias=True, seed=s)).to(device="meta") for s in range(5)]
    kw = dict(measure="gaussian", centred=True) if measure == "centred" else dict(measure=measure)
    watch = OffDevice("meta")
    with watch:
        M = tnsim.similarity_matrix(nets, method=method, block_size=2, progress=False, **kw)
        R = tnsim.similarity_matrix(nets[:2], nets[2:], method=method, progress=False, **kw)
    assert M.device.type == "meta" and M.shape == (5, 5) and R.shape == (2, 3)
    assert watch.found == set()


HOST = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__")


def test_no_host_conversion_while_blocks_are_computed(monkeypatch):
    models = [residual_stack(layers=1, bias=True, seed=s) for s in range(4)]
    expected = tnsim.similarity_matrix(models, block_size=2, progress=False)
    originals = {name: getattr(torch.Tensor, name) for name in HOST}
    calls = []

    def guard(name):
        def refuse(self, *args, **kwargs):
            calls.append(name)
            raise AssertionError(f"host conversion Tensor.{name} inside the block loop")

        return refuse

    def guarded(task):
        def run(*args):
            with monkeypatch.context() as m:
                for name in HOST:
                    m.setattr(torch.Tensor, name, guard(name))
                return task(*args)

        return run

    for task in ("block_task", "norm_task"):
        monkeypatch.setattr(matrix, task, guarded(getattr(matrix, task)))
    for method in ("exact", "recursive"):
        M = tnsim.similarity_matrix(models, method=method, block_size=2, progress=False)
        torch.testing.assert_close(M, expected, rtol=1e-10, atol=1e-12) if method == "exact" else None
    assert calls == [] and all(getattr(torch.Tensor, n) is originals[n] for n in HOST)

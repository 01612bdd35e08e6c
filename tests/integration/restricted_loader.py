"""The test's own restricted loader, for zoogate outputs that PyTorch 1.13's weights_only loader
cannot open although they are benign (it rejects plain floats, bytes, Namespace, sets...).

RestrictedUnpickler admits exactly the globals that the reference object needs when written as a
protocol-2 pickle (expected_globals) and nothing else, so a zoogate output that names any other
global fails to load instead of running. Storages are read the way torch.load reads them, through
PyTorch's own archive reader (torch._C.PyTorchFileReader).
"""
import _compat_pickle
import argparse
import collections
import io
import pickle

import numpy
import torch

TENSOR_GLOBALS = {"torch._utils._rebuild_tensor_v2", "collections.OrderedDict"}
BYTES_GLOBALS = {"_codecs.encode", "builtins.bytes"}  # protocol 2 writes bytes as encode(str)
NUMPY_ARRAY_GLOBALS = {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
                       "numpy.core.numeric._frombuffer"}  # the protocol-5 spelling
# Big-endian arrays are rebuilt through _frombuffer over a bytearray, which keeps their byte order.
NON_NATIVE_ARRAY_GLOBALS = {"builtins.bytearray"}
NUMPY_SCALAR_GLOBALS = {"numpy.core.multiarray.scalar", "numpy.dtype"}
STORAGE_NAMES = torch.storage._dtype_to_storage_type_map()


def expected_globals(reference):
    """The globals a protocol-2 pickle of `reference` needs: one set per kind of value it holds."""
    found, seen, pending = set(), set(), [reference]
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        found |= _globals_of(value)
        pending.extend(_children(value))
    return found


def _globals_of(value):
    if isinstance(value, torch.Tensor):
        names = TENSOR_GLOBALS | {f"torch.{STORAGE_NAMES[value.dtype]}"}
        if isinstance(value, torch.nn.Parameter):
            names.add("torch._utils._rebuild_parameter")
        return names
    simple = {collections.OrderedDict: {"collections.OrderedDict"},
              argparse.Namespace: {"argparse.Namespace"}, set: {"builtins.set"},
              frozenset: {"builtins.frozenset"}, bytes: BYTES_GLOBALS,
              bytearray: BYTES_GLOBALS | {"builtins.bytearray"}, torch.Size: {"torch.Size"}}
    if type(value) in simple:
        return simple[type(value)]
    if isinstance(value, torch.dtype):
        return {str(value)}
    if isinstance(value, numpy.ndarray):
        byte_order = NON_NATIVE_ARRAY_GLOBALS if value.dtype.byteorder == ">" else set()
        return NUMPY_ARRAY_GLOBALS | BYTES_GLOBALS | byte_order
    if isinstance(value, numpy.generic):
        return NUMPY_SCALAR_GLOBALS | BYTES_GLOBALS
    return set()


def _children(value):
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
        return children + ([vars(value)] if isinstance(value, collections.OrderedDict) else [])
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    if isinstance(value, argparse.Namespace):
        return [vars(value)]
    return []


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the exact (module, name) pairs in `allowed`; refuses everything else."""

    def __init__(self, file, allowed, persistent_load=None):
        super().__init__(file)
        self.allowed = frozenset(allowed)
        self.storage_loader = persistent_load

    def find_class(self, module, name):
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if f"{module}.{name}" not in self.allowed:
            raise pickle.UnpicklingError(f"global {module}.{name} is not expected in this file")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        if self.storage_loader is None:
            raise pickle.UnpicklingError(f"persistent id {pid!r} in a plain pickle")
        return self.storage_loader(pid)


def load_pickle(path, allowed):
    with open(path, "rb") as handle:
        return RestrictedUnpickler(handle, allowed).load()


def load_torch_zip(path, allowed):
    """torch.load's zip path with the restricted unpickler instead of the standard one."""
    reader = torch._C.PyTorchFileReader(path)
    storages = {}

    def storage(pid):
        kind, storage_class, key, _location, numel = pid
        if kind != "storage" or not isinstance(key, str):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if key not in storages:
            dtype = storage_class.dtype
            nbytes = numel * torch._utils._element_size(dtype)
            raw = reader.get_storage_from_record(f"data/{key}", nbytes, torch.uint8).storage()._storage
            storages[key] = torch.storage.TypedStorage(wrap_storage=raw, dtype=dtype)
        return storages[key]

    data = io.BytesIO(reader.get_record("data.pkl"))
    return RestrictedUnpickler(data, allowed, storage).load()

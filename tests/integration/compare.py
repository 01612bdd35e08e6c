"""Deep comparison of two loaded checkpoints: the original and zoogate's output.

differences(reference, candidate) walks both in lockstep and lists every way they differ: exact
types (Parameter vs Tensor, OrderedDict vs dict, bytes vs bytearray, numpy scalar types), dict key
order and OrderedDict attributes (a state_dict's _metadata), floats bit for bit (NaN and -0.0
included), tensors' dtype, shape, strides, storage offset, requires_grad and whole-storage bytes,
which objects are the same object (aliases and cycles), and which tensors share a storage.
"""
import argparse
import collections
import struct

import numpy
import torch

import fixture_common

MAX_REPORTED = 25
ATOMS = (type(None), bool, int, str, bytes, bytearray, torch.dtype, torch.Size)
# Mutable containers and tensors: pickle keeps their identity, so aliasing must survive.
IDENTITY_TYPES = (list, dict, set, argparse.Namespace, torch.Tensor, numpy.ndarray)


def differences(reference, candidate):
    comparison = _Comparison()
    comparison.compare(reference, candidate, "root")
    comparison.compare_storage_sharing()
    return comparison.problems[:MAX_REPORTED]


class _Comparison:
    def __init__(self):
        self.problems = []
        self.reference_seen = {}
        self.candidate_seen = {}
        self.tensors = []

    def report(self, path, message):
        self.problems.append(f"{path}: {message}")

    def compare(self, reference, candidate, path):
        if type(reference) is not type(candidate):
            self.report(path, f"type {type(reference).__name__} became {type(candidate).__name__}")
            return
        if isinstance(reference, IDENTITY_TYPES) and not self.first_visit(reference, candidate, path):
            return
        if isinstance(reference, torch.Tensor):
            self.compare_tensor(reference, candidate, path)
        elif isinstance(reference, float):
            self.compare_bits(struct.pack("<d", reference), struct.pack("<d", candidate), path)
        elif isinstance(reference, ATOMS):
            if reference != candidate:
                self.report(path, f"{reference!r} became {candidate!r}")
        elif isinstance(reference, (list, tuple)):
            self.compare_sequence(reference, candidate, path)
        elif isinstance(reference, dict):
            self.compare_dict(reference, candidate, path)
        elif isinstance(reference, (set, frozenset)):
            if _set_key(reference) != _set_key(candidate):
                self.report(path, f"set {reference!r} became {candidate!r}")
        elif isinstance(reference, argparse.Namespace):
            self.compare_dict(vars(reference), vars(candidate), path + ".__dict__")
        elif isinstance(reference, (numpy.ndarray, numpy.generic)):
            self.compare_numpy(reference, candidate, path)
        else:
            self.report(path, f"no comparison for type {type(reference).__name__}")

    def first_visit(self, reference, candidate, path):
        """Checks that both sides alias the same earlier object (or none); True on a first visit."""
        earlier = self.reference_seen.get(id(reference))
        if earlier != self.candidate_seen.get(id(candidate)):
            self.report(path, f"aliasing differs: reference first seen at {earlier}, "
                              f"candidate at {self.candidate_seen.get(id(candidate))}")
            return False
        if earlier is not None:
            return False
        self.reference_seen[id(reference)] = path
        self.candidate_seen[id(candidate)] = path
        return True

    def compare_bits(self, reference, candidate, path):
        if reference != candidate:
            self.report(path, f"bits {reference.hex()} became {candidate.hex()}")

    def compare_sequence(self, reference, candidate, path):
        if len(reference) != len(candidate):
            self.report(path, f"length {len(reference)} became {len(candidate)}")
            return
        for index, (left, right) in enumerate(zip(reference, candidate)):
            self.compare(left, right, f"{path}[{index}]")

    def compare_dict(self, reference, candidate, path):
        reference_keys = [(type(key), key) for key in reference]
        candidate_keys = [(type(key), key) for key in candidate]
        if reference_keys != candidate_keys:
            self.report(path, f"keys {list(reference)[:8]}... became {list(candidate)[:8]}... "
                              "(order and key types count)")
            return
        for key in reference:
            self.compare(reference[key], candidate[key], f"{path}[{key!r}]")
        if isinstance(reference, collections.OrderedDict):
            self.compare_dict(vars(reference), vars(candidate), path + ".__dict__")

    def compare_tensor(self, reference, candidate, path):
        for attribute in ("dtype", "shape", "device", "requires_grad", "is_leaf"):
            if getattr(reference, attribute) != getattr(candidate, attribute):
                self.report(path, f"{attribute} {getattr(reference, attribute)} became "
                                  f"{getattr(candidate, attribute)}")
        if reference.stride() != candidate.stride():
            self.report(path, f"stride {reference.stride()} became {candidate.stride()}")
        if reference.storage_offset() != candidate.storage_offset():
            self.report(path, f"storage offset {reference.storage_offset()} became "
                              f"{candidate.storage_offset()}")
        reference_bytes = fixture_common.storage_bytes(reference.storage())
        candidate_bytes = fixture_common.storage_bytes(candidate.storage())
        if reference_bytes != candidate_bytes:
            self.report(path, f"storage bytes differ ({len(reference_bytes)} vs {len(candidate_bytes)} "
                              "bytes)")
        self.tensors.append((path, reference, candidate))

    def compare_storage_sharing(self):
        """Tensors that share a storage on one side share it on the other, and no others do."""
        reference_groups = _sharing_groups((path, left) for path, left, _ in self.tensors)
        candidate_groups = _sharing_groups((path, right) for path, _, right in self.tensors)
        for (path, _, _), left, right in zip(self.tensors, reference_groups, candidate_groups):
            if left != right:
                self.report(path, f"shares its storage with {left} in the reference, with {right} "
                                  "in the candidate")

    def compare_numpy(self, reference, candidate, path):
        if reference.dtype.str != candidate.dtype.str or reference.dtype != candidate.dtype:
            self.report(path, f"dtype {reference.dtype} became {candidate.dtype}")
        if isinstance(reference, numpy.ndarray):
            for attribute in ("shape", "strides"):
                if getattr(reference, attribute) != getattr(candidate, attribute):
                    self.report(path, f"{attribute} {getattr(reference, attribute)} became "
                                      f"{getattr(candidate, attribute)}")
        self.compare_bits(reference.tobytes(order="A"), candidate.tobytes(order="A"), path)


def _sharing_groups(tensors):
    """For each (path, tensor), the path of the first tensor that uses the same storage."""
    first_user = {}
    return [first_user.setdefault(tensor.storage()._cdata, path) for path, tensor in tensors]


def _set_key(values):
    return sorted((type(value).__name__, repr(value)) for value in values)

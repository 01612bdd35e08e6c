#!/usr/bin/python3
"""Writes the example checkpoint that scripts/run.sh sanitizes.

A small PyTorch state dict (a two-layer MLP) saved by torch.save, to which a booby-trapped entry has
been added the way malicious Hub uploads do it: loading the file with torch.load(weights_only=False)
would call os.system. The command here only creates a marker file next to the checkpoint, so the
example is harmless even if someone loads it unsafely.
"""
import collections
import os
import sys

import torch


class Booby:
    """Pickles as a call of os.system, which a naive loader executes."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    state = collections.OrderedDict(model.state_dict())
    state["_hook"] = Booby(os.path.join(out_dir, "PAYLOAD_RAN"))
    torch.save(state, os.path.join(out_dir, "pytorch_model.bin"))


if __name__ == "__main__":
    main()

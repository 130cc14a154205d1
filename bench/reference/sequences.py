"""Packed sequences (mimo/packed_sequences.cc): cu_seqlens and per-sequence positions."""

import numpy as np
import torch

from archive import DumpError


# Per-token positions restart at 0 in every sequence.
class Sequences:
    def __init__(self, lengths, device):
        self.lengths = [int(n) for n in lengths]
        if not self.lengths or any(n < 0 for n in self.lengths) or sum(self.lengths) == 0:
            raise DumpError("bad sequence lengths %s" % self.lengths)
        self.cu = [0]
        for n in self.lengths:
            self.cu.append(self.cu[-1] + n)
        self.tokens = self.cu[-1]
        pos = np.concatenate([np.arange(n, dtype=np.int64) for n in self.lengths])
        self.positions = torch.from_numpy(pos).to(device)
        self.device = device
        self._rope = {}

    def rope(self, rotary_dim, base):
        """cos, sin (T, rotary_dim / 2) fp32 from angles computed in float64 (kernels/rope_cpu.cc:
        theta = p * base^(-2i / rotary_dim) in double, cos/sin rounded to float)."""
        key = (rotary_dim, base)
        if key not in self._rope:
            half = rotary_dim // 2
            i = torch.arange(half, dtype=torch.float64, device=self.device)
            inv = torch.pow(torch.tensor(base, dtype=torch.float64, device=self.device),
                            -2.0 * i / rotary_dim)
            theta = self.positions.to(torch.float64)[:, None] * inv[None, :]
            self._rope[key] = (torch.cos(theta).to(torch.float32),
                               torch.sin(theta).to(torch.float32))
        return self._rope[key]


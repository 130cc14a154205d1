"""Tensor archives (init.bin, batches.bin, routing.bin) as bench/reference_dump.cc writes them."""

import mmap
import os
import struct

import numpy as np

MAGIC = b"MIMOTEN1"


class DumpError(Exception):
    """A dump the reference cannot read or use (main exits 2)."""


# Tensor archives: "MIMOTEN1", then per tensor: uint32 name length, name, uint8 dtype (0 f32,
# 1 i32), uint8 ndim, ndim int64 dims, row-major little-endian data.
class Archive:
    def __init__(self, path):
        self.path = path
        self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        if size < len(MAGIC):
            raise DumpError("%s: too short for an archive" % path)
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        mm = self._mm
        if mm[: len(MAGIC)] != MAGIC:
            raise DumpError("%s: bad magic %r" % (path, bytes(mm[: len(MAGIC)])))
        self.index = {}
        off = len(MAGIC)
        while off < size:
            if off + 4 > size:
                raise DumpError("%s: truncated record header at byte %d" % (path, off))
            (n,) = struct.unpack_from("<I", mm, off)
            off += 4
            if off + n + 2 > size:
                raise DumpError("%s: truncated record name at byte %d" % (path, off))
            name = mm[off : off + n].decode("utf-8")
            off += n
            dtype, ndim = struct.unpack_from("<BB", mm, off)
            off += 2
            if dtype not in (0, 1):
                raise DumpError("%s: %s has unknown dtype %d" % (path, name, dtype))
            if off + 8 * ndim > size:
                raise DumpError("%s: %s: truncated dims" % (path, name))
            dims = tuple(struct.unpack_from("<%dq" % ndim, mm, off)) if ndim else ()
            off += 8 * ndim
            if any(d < 0 for d in dims):
                raise DumpError("%s: %s has negative dims %s" % (path, name, dims))
            count = int(np.prod(dims, dtype=np.int64)) if dims else 1
            if off + 4 * count > size:
                raise DumpError("%s: %s: truncated data" % (path, name))
            if name in self.index:
                raise DumpError("%s: %s appears twice" % (path, name))
            self.index[name] = (dtype, dims, off, count)
            off += 4 * count

    def __contains__(self, name):
        return name in self.index

    def names(self):
        return list(self.index.keys())

    def shape(self, name):
        return self.index[name][1]

    def get(self, name):
        if name not in self.index:
            raise DumpError("%s: no tensor %s" % (self.path, name))
        dtype, dims, off, count = self.index[name]
        np_dtype = np.dtype("<f4") if dtype == 0 else np.dtype("<i4")
        if count == 0:
            return np.zeros(dims, dtype=np_dtype)
        return np.frombuffer(self._mm, dtype=np_dtype, count=count, offset=off).reshape(dims).copy()

    def dtype_of(self, name):
        return "float32" if self.index[name][0] == 0 else "int32"


"""The image LMDB: one Caffe Datum per image, keyed by its zero-padded index.

Training data is stored once per image (not per triplet): the triplets are an
(T, 3) index array beside the LMDB and the Python data layer assembles
batches. So the disk footprint grows with the number of images. Each Datum is
3 x H x W uint8 BGR (raw 0..255, CHW), label = the person's index among all
identities of the prepared dataset (images.json "label"; the same for every
split, so splits can share one LMDB), readable by Caffe's own Data layer too.
"""
import os

import lmdb
import numpy as np
from caffe.proto import caffe_pb2

from core import MtdnetError
from core.fsutil import atomic_dir, free_bytes


def key(i):
    return b"%08d" % i


def encode_datum(img_chw, label):
    img_chw = np.ascontiguousarray(img_chw, dtype=np.uint8)
    if img_chw.ndim != 3 or img_chw.shape[0] != 3:
        raise ValueError(f"expected a 3xHxW uint8 image, got shape {img_chw.shape}")
    d = caffe_pb2.Datum()
    d.channels, d.height, d.width = img_chw.shape
    d.data = img_chw.tobytes()
    d.label = int(label)
    return d.SerializeToString()


def decode_datum(raw):
    d = caffe_pb2.Datum()
    d.ParseFromString(raw)
    img = np.frombuffer(d.data, dtype=np.uint8).reshape(d.channels, d.height, d.width)
    return img, d.label


# Below this many bytes free, a failed LMDB write is the full disk (LMDB reports it as
# "Input/output error" from mdb_txn_commit).
NEARLY_FULL = 64 << 20


def write_image_lmdb(path, items, map_size=None, count=None, name=None):
    """Write (img_chw_uint8, label) items to a new LMDB at `path`, atomically.

    The LMDB is built in a temporary sibling directory and renamed at the end,
    so an error (or a full disk) never leaves a partial LMDB under `path`.
    `name`: the path errors name (default `path`; a build writing inside its own
    temporary folder names the final one). Returns (number of images, bytes on disk).
    """
    name = name or path
    with atomic_dir(path) as tmp:
        env = lmdb.open(tmp, map_size=map_size or (1 << 40), subdir=True,
                        lock=False, writemap=False)
        n = 0
        try:
            txn = env.begin(write=True)
            for img, label in items:
                txn.put(key(n), encode_datum(img, label))
                n += 1
                if n % 1000 == 0:
                    txn.commit()
                    txn = env.begin(write=True)
            txn.commit()
            env.sync()
        except lmdb.MapFullError:
            raise MtdnetError(f"{name}: LMDB map is full after {n} images")
        except lmdb.Error as e:
            free = free_bytes(tmp)
            if free is not None and free < NEARLY_FULL:
                raise MtdnetError(f"{name}: No space left on device after {n} images ({free / 1e6:.1f} MB "
                                  f"free there; LMDB said: {e}); free some space and run the command "
                                  "again") from None
            raise MtdnetError(f"{name}: writing the LMDB failed after {n} images: {e}") from None
        finally:
            env.close()
        if count is not None and n != count:
            raise MtdnetError(f"{name}: expected {count} images, wrote {n}")
    return n, dir_bytes(path)


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


class ImageDB:
    """Random access to an image LMDB written by write_image_lmdb."""

    def __init__(self, path):
        if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "data.mdb")):
            raise MtdnetError(f"{path}: not an image LMDB (no data.mdb); run `make data` first")
        self.path = path
        self.env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True)
        self.txn = self.env.begin(buffers=False)
        self.n = self.env.stat()["entries"]
        if self.n == 0:
            raise MtdnetError(f"{path}: the image LMDB is empty")
        self.shape = self.get(0)[0].shape

    def __len__(self):
        return self.n

    def get(self, i):
        raw = self.txn.get(key(int(i)))
        if raw is None:
            raise MtdnetError(f"{self.path}: no image with index {i} (has {self.n})")
        return decode_datum(raw)

    def images(self, indices):
        """uint8 array (len(indices), 3, H, W)."""
        out = np.empty((len(indices),) + tuple(self.shape), np.uint8)
        for j, i in enumerate(indices):
            img, _ = self.get(i)
            if img.shape != self.shape:
                raise MtdnetError(f"{self.path}: image {i} has shape {img.shape}, expected {self.shape}")
            out[j] = img
        return out

    def close(self):
        self.env.close()

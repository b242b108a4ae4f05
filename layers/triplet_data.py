"""TripletDataLayer: batches of (anchor, positive, negative) images for the train nets.

Reads the per-image LMDB written by data_prep (one Datum per image) and the
(T, 3) triplet index array beside it, so training data costs one image's
bytes per image, not per triplet. Tops: data_a, data_p, data_n, each
(N, 3, S, S) float32, BGR, raw 0..255 (no mean, as the authors).

param_str (JSON):
  source     path of images.lmdb (relative paths: to the working directory,
             then to the repository root), or a list of such paths
  triplets   path of the .npy (T, 3) int array of image indices, or a list
             (one per source, same length): the sources' triplets are mixed
             into one list (MTDnet-aug: target data plus CUHK03)
  balance    with lists: every later source contributes as many triplets as the
             first (the target), a random subset drawn with `seed`: the release's
             1:1 MTDnet-aug mix, CUHK03's list cut to the target's length
             (default false; a later source with fewer triplets is an error)
  batch_size triplets per batch (N)
  input_size optional: the image side the net was generated for; the LMDB's
             images must have it (catches data prepared for another profile)
  mirror     random horizontal mirror of each image independently (default true)
  shift      random translation of each image independently by up to this many
             pixels in x and y, borders filled by edge replication (default 0:
             none); cheap augmentation for small data sets such as VIPeR
  seed       RNG seed for the epoch shuffles and mirrors (default 1701)
  shuffle    reshuffle the triplet order every epoch (default true)
  prefetch   worker processes that build batches ahead of the solver (default
             0: each batch is built inside forward, on the solver's critical
             path). With W > 0, worker w builds batches w, w+W, w+2W, ... into
             shared memory (uint8), two ahead; forward only converts one into
             the float tops (a quarter of a float copy's reads).
             Every worker replays the same seeded plan (order, mirrors,
             shifts), so the batch sequence is the same for any W.

Workers are forked (not spawned: the `caffe` tool embeds Python and its main
thread holds the GIL while Caffe computes, so Python threads would not run
during an iteration; forked processes do). They re-open the LMDBs, never
touch CUDA, and die with the process that forked them.
"""
import atexit
import ctypes
import mmap
import multiprocessing
import os
import signal
import traceback
import weakref

import caffe
import numpy as np

from data_prep.imagedb import ImageDB
from layers.params import REQUIRED, non_negative, parse_params, positive

def _paths(v):
    if isinstance(v, list) and (not v or not all(isinstance(x, str) for x in v)):
        return "must be a path or a non-empty list of paths"
    return None


SCHEMA = {
    "source": ((str, list), REQUIRED, _paths),
    "triplets": ((str, list), REQUIRED, _paths),
    "batch_size": (int, REQUIRED, positive),
    "input_size": (int, None, positive),
    "mirror": (bool, True, None),
    "shift": (int, 0, non_negative),
    "seed": (int, 1701, None),
    "shuffle": (bool, True, None),
    "balance": (bool, False, None),
    "prefetch": (int, 0, non_negative),
}


def resolve(path):
    """Working directory first (caffe train is run from the repo root), then the repo."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(repo, path)


def load_triplets(path, n_images):
    path = resolve(path)
    try:
        t = np.load(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: triplet file not found; run `make data` first")
    except Exception as e:
        raise ValueError(f"{path}: cannot read the triplet array: {e}")
    if t.ndim != 2 or t.shape[1] != 3 or t.shape[0] == 0 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"{path}: expected a non-empty (T, 3) integer array, got {t.dtype} {t.shape}")
    if t.min() < 0 or t.max() >= n_images:
        raise ValueError(f"{path}: triplet indices must lie in [0, {n_images}), got [{t.min()}, {t.max()}]")
    return t.astype(np.int64)


class MultiImageDB:
    """Several image LMDBs seen as one: source k's image i has index offsets[k] + i."""

    def __init__(self, dbs):
        self.dbs = dbs
        self.offsets = np.cumsum([0] + [len(db) for db in dbs])
        self.shape = dbs[0].shape
        for db in dbs[1:]:
            if db.shape != self.shape:
                raise ValueError(f"{db.path}: images are {db.shape}, but {dbs[0].path} has {self.shape}; "
                                 "mixed sources must be prepared for the same profile")

    def __len__(self):
        return int(self.offsets[-1])

    def images(self, indices):
        indices = np.asarray(indices)
        out = np.empty((len(indices),) + tuple(self.shape), np.uint8)
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        for k, db in enumerate(self.dbs):
            sel = np.flatnonzero(which == k)
            if len(sel):
                out[sel] = db.images(indices[sel] - self.offsets[k])
        return out


def open_sources(sources, triplet_files, balance=False, seed=1701):
    """(db, triplets) for one source or a list of them (triplets offset into one index space;
    balance: each later source's list cut to the first's length, a subset drawn with `seed`)."""
    if isinstance(sources, str) != isinstance(triplet_files, str):
        raise ValueError("'source' and 'triplets' must both be paths or both be lists")
    if isinstance(sources, str):
        db = ImageDB(resolve(sources))
        return db, load_triplets(triplet_files, len(db))
    if len(sources) != len(triplet_files):
        raise ValueError(f"{len(sources)} sources but {len(triplet_files)} triplet files")
    dbs = [ImageDB(resolve(s)) for s in sources]
    multi = MultiImageDB(dbs)
    trips = [load_triplets(t, len(db)) + off for t, db, off in zip(triplet_files, dbs, multi.offsets)]
    if balance:
        m = len(trips[0])
        for f, t in zip(triplet_files[1:], trips[1:]):
            if len(t) < m:
                raise ValueError(f"{f}: {len(t)} triplets, fewer than the {m} of {triplet_files[0]}: a 1:1 "
                                 f"mix needs at least as many (prepare it with more source_triplets_per_pair)")
        trips = [trips[0]] + [t[np.random.default_rng([seed, k]).permutation(len(t))[:m]]
                              for k, t in enumerate(trips[1:], 1)]
    return multi, np.concatenate(trips)


class TripletBatcher:
    """The layer's logic without Caffe: epochs of shuffled triplets, mirrored images."""

    def __init__(self, db, triplets, batch_size, mirror=True, seed=1701, shuffle=True, shift=0):
        self.db, self.triplets, self.n = db, triplets, batch_size
        self.mirror, self.shuffle, self.shift = mirror, shuffle, shift
        self.rng = np.random.RandomState(seed)
        self.epoch, self.cursor = 0, 0
        self.order = self._new_order()

    def _new_order(self):
        idx = np.arange(len(self.triplets))
        if self.shuffle:
            self.rng.shuffle(idx)
        return idx

    def next_indices(self):
        rows = []
        while len(rows) < self.n:
            take = min(self.n - len(rows), len(self.order) - self.cursor)
            rows.extend(self.order[self.cursor:self.cursor + take])
            self.cursor += take
            if self.cursor == len(self.order):
                self.epoch += 1
                self.cursor = 0
                self.order = self._new_order()
        return self.triplets[np.asarray(rows)]

    def next_plan(self):
        """The random decisions of the next batch (triplet rows, mirrors, shifts), drawn
        from the RNG in a fixed order; `materialize` turns a plan into images without
        touching the RNG, so prefetch workers replaying the plans give the same batches."""
        trip = self.next_indices()
        n, flips, shifts = len(trip), [], []
        for _ in range(3):
            flips.append(self.rng.rand(n) < 0.5 if self.mirror else None)
            shifts.append(self.rng.randint(0, 2 * self.shift + 1, size=(2, n)) if self.shift else None)
        return trip, flips, shifts

    def materialize(self, plan, out=None):
        """Three uint8 arrays (N, 3, S, S) of a plan; with `out` (3, N, 3, S, S), also
        written there."""
        trip, flips, shifts = plan
        imgs_all = []
        for col in range(3):
            imgs = self.db.images(trip[:, col])
            if flips[col] is not None:
                imgs[flips[col]] = imgs[flips[col]][..., ::-1]
            if shifts[col] is not None:
                imgs = self._translate(imgs, shifts[col])
            if out is not None:
                out[col][...] = imgs
            imgs_all.append(imgs)
        return imgs_all

    def next_batch_uint8(self):
        """Three uint8 arrays (N, 3, S, S): anchors, positives, negatives.

        Mirrored as uint8 and converted to float only when copied into the
        tops: a quarter of the memory traffic of mirroring floats.
        """
        return self.materialize(self.next_plan())

    def _translate(self, imgs, shift):
        """Each image moved by (dy, dx) = shift[:, i] - s, in [-s, s]^2, edges replicated."""
        s, (n, _, h, w) = self.shift, imgs.shape
        padded = np.pad(imgs, ((0, 0), (0, 0), (s, s), (s, s)), mode="edge")
        dy, dx = shift
        rows = (dy[:, None] + np.arange(h))[:, None, :, None]
        cols = (dx[:, None] + np.arange(w))[:, None, None, :]
        return padded[np.arange(n)[:, None, None, None], np.arange(3)[None, :, None, None], rows, cols]

    def next_batch(self):
        """Three float32 arrays (N, 3, S, S): anchors, positives, negatives."""
        return [imgs.astype(np.float32) for imgs in self.next_batch_uint8()]


def _die_with_parent():
    """SIGTERM this process when the thread that forked it exits (Linux prctl)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _prefetch_worker(make_batcher, w, workers, depth, buf, shape, full, empty, errors, parent):
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C / SIGHUP stop the solver, not us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The solver stops us with SIGTERM: end quietly, not with the stack trace glog's failure
    # handler (inherited from `caffe`) prints.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(0)
    try:
        batcher = make_batcher()                     # its own LMDB handles: never share them across fork
        per_slot = int(np.prod(shape))
        k = j = 0
        while True:
            plan = batcher.next_plan()               # every worker replays every plan (cheap) ...
            if k % workers == w:                     # ... and builds only its own batches
                empty.acquire()
                view = np.frombuffer(buf, np.uint8, per_slot, (j % depth) * per_slot).reshape(shape)
                batcher.materialize(plan, out=view)
                full.release()
                j += 1
            k += 1
    except BaseException:
        try:
            errors.put(f"prefetch worker {w}: {traceback.format_exc()}")
        finally:
            os._exit(1)


def _stop_workers(procs):
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


class Prefetcher:
    """Batches from `workers` forked processes, in the order a single batcher gives them.

    make_batcher() -> a fresh TripletBatcher (called in each worker); shape: (N, 3, S, S).
    """

    def __init__(self, make_batcher, shape, workers, depth=2):
        ctx = multiprocessing.get_context("fork")
        self.workers, self.depth = workers, depth
        self.shape = (3,) + tuple(shape)
        self.per_slot = int(np.prod(self.shape))
        self.bufs = [mmap.mmap(-1, self.per_slot * depth) for _ in range(workers)]   # MAP_SHARED, uint8
        self.full = [ctx.Semaphore(0) for _ in range(workers)]
        self.empty = [ctx.Semaphore(depth) for _ in range(workers)]
        self.errors = ctx.SimpleQueue()
        self.procs = [ctx.Process(target=_prefetch_worker, daemon=True, name=f"mtdnet-prefetch-{w}",
                                  args=(make_batcher, w, workers, depth, self.bufs[w], self.shape,
                                        self.full[w], self.empty[w], self.errors, os.getpid()))
                      for w in range(workers)]
        for p in self.procs:
            p.start()
        self.k = 0
        self._finalize = weakref.finalize(self, _stop_workers, self.procs)
        atexit.register(self._finalize)

    def next_into(self, tops):
        """Copy the next batch into three blobs' data (or float arrays): uint8 -> float32, exact."""
        w, j = self.k % self.workers, self.k // self.workers
        while not self.full[w].acquire(timeout=2.0):
            if not self.procs[w].is_alive():
                msg = self.errors.get() if not self.errors.empty() else \
                    f"prefetch worker {w} exited (code {self.procs[w].exitcode})"
                raise RuntimeError(f"TripletDataLayer: {msg}")
        view = np.frombuffer(self.bufs[w], np.uint8, self.per_slot,
                             (j % self.depth) * self.per_slot).reshape(self.shape)
        for i in range(3):
            dst = tops[i] if isinstance(tops[i], np.ndarray) else tops[i].data
            dst[...] = view[i]
        self.empty[w].release()
        self.k += 1

    def close(self):
        self._finalize()


class TripletDataLayer(caffe.Layer):
    def setup(self, bottom, top):
        p = parse_params(self.__class__.__name__, self.param_str, SCHEMA)
        if len(bottom) != 0 or len(top) != 3:
            raise ValueError("TripletDataLayer takes no bottoms and gives 3 tops (data_a, data_p, data_n)")
        if p["balance"] and isinstance(p["source"], str):
            raise ValueError("'balance' mixes several sources: give 'source' and 'triplets' as lists")
        db, trip = open_sources(p["source"], p["triplets"], p["balance"], p["seed"])
        size = p["input_size"]
        if size is not None and tuple(db.shape[1:]) != (size, size):
            raise ValueError(f"{p['source']}: images are {db.shape[1]}x{db.shape[2]}, the net expects "
                             f"{size}x{size}: prepare the data for the net's profile")
        size = size or db.shape[1]
        if p["shift"] >= size:
            raise ValueError(f"shift {p['shift']} must be smaller than the image side {size}")
        self.batcher = TripletBatcher(db, trip, p["batch_size"], p["mirror"], p["seed"], p["shuffle"],
                                      p["shift"])
        self.shape = (p["batch_size"],) + tuple(db.shape)
        self.prefetcher = None
        if p["prefetch"]:
            def make_batcher():
                db, trip = open_sources(p["source"], p["triplets"], p["balance"], p["seed"])
                return TripletBatcher(db, trip, p["batch_size"], p["mirror"], p["seed"], p["shuffle"],
                                      p["shift"])
            self.prefetcher = Prefetcher(make_batcher, self.shape, p["prefetch"])
        self.reshape(bottom, top)

    def reshape(self, bottom, top):
        # RawBlobVec cannot be iterated (no to_python converter): index it.
        for i in range(3):
            top[i].reshape(*self.shape)

    def forward(self, bottom, top):
        if self.prefetcher is not None:
            self.prefetcher.next_into(top)
            return
        for i, arr in enumerate(self.batcher.next_batch_uint8()):
            top[i].data[...] = arr      # uint8 -> float32 in the copy, exact

    def backward(self, top, propagate_down, bottom):
        pass

"""Trained models kept in the repository: models/<run name>/.

A published model is the run's chosen snapshot (on validation identities, `make eval
SELECT=1`, else its last) with what makes it trustworthy beside it:

  <snapshot>.caffemodel   the weights
  run.json                how it was trained (settings, seed, initialisation, iterations, time)
  select-val.json         the snapshot choice on validation identities (when made)
  cmc-*.json              its evaluations on the test identities
  SHA256SUMS              sha256 of every file above

Later stages (fine-tuning, `make table1`) start from it without retraining; reproducing it
is the run's `make train` and `make eval SELECT=1` commands, recorded in its README.md.

A run too long for one working session is kept as a resume pair instead,
models/resume/<run name>/: its newest snapshot pair (.caffemodel + .solverstate), run.json,
the gzipped train.log and SHA256SUMS. `make train` of that run on a machine without its
runs/ folder continues from it (mtdnet.training), so a later session picks up where the
last one stopped rather than starting over.
"""
import gzip
import hashlib
import os
import shutil

from core import MtdnetError
from core.fsutil import atomic_dir, atomic_write_bytes, atomic_write_text, read_json
from caffe.proto import caffe_pb2

from mtdnet import caffe_run

SUMS = "SHA256SUMS"


def model_dir(run):
    return os.path.join(run.project.models_dir, run.name)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def chosen(run):
    """The run's chosen snapshot: select-val.json's, else its newest."""
    selection = os.path.join(run.result_dir, "select-val.json")
    if os.path.exists(selection):
        return run.project.abs(read_json(selection, "snapshot choice")["model"])
    latest = caffe_run.latest_snapshot(run.snapshot_prefix, "caffemodel")
    if not latest:
        raise MtdnetError(f"{run.snapshot_prefix}_iter_*.caffemodel: no model to publish; train it first "
                          f"({run.commands()[0]})")
    return latest


def publish(run, results=()):
    """Copy the run's chosen model and records into models/<run name>/ (replacing an older copy
    as a whole); `results`: more Runs whose test evaluations go with it (e.g. its trp)."""
    model = chosen(run)
    files = [(model, os.path.basename(model)), (run.info, "run.json")]
    selection = os.path.join(run.result_dir, "select-val.json")
    if os.path.exists(selection):
        files.append((selection, "select-val.json"))
    for r in (run,) + tuple(results):
        for f in sorted(os.listdir(r.result_dir)) if os.path.isdir(r.result_dir) else []:
            if f.startswith("cmc-") and f.endswith(".json") and "-val-" not in f:
                files.append((os.path.join(r.result_dir, f), f"{r.result_name}.{f}"))
    out = model_dir(run)
    with atomic_dir(out, guard=(_ours, "a published model", "Move your own files out of it first.")) as tmp:
        for src, name in files:
            shutil.copyfile(src, os.path.join(tmp, name))
        train, evaluate = run.commands()
        atomic_write_text(os.path.join(tmp, "README.md"),
                          f"# {run.name}\n\nThe {run.train_variant.title} model of `{run.name}`: "
                          f"{os.path.basename(model)}, chosen as `select-val.json` says (or the last "
                          f"snapshot). Reproduce it with\n\n    {train}\n    {evaluate} SELECT=1\n\n"
                          f"and check the files with `sha256sum -c {SUMS}`.\n")
        atomic_write_text(os.path.join(tmp, SUMS), "".join(f"{sha256(src)}  {name}\n" for src, name in files))
    return out


def _ours(folder):
    """A folder publish() wrote: README.md, SHA256SUMS and the files SHA256SUMS lists, nothing else."""
    sums = os.path.join(folder, SUMS)
    try:
        with open(sums) as f:
            listed = {line.split()[1] for line in f if line.strip()}
    except (OSError, IndexError):
        return False
    return set(os.listdir(folder)) <= listed | {SUMS, "README.md"}


def published(run, d=None):
    """The published model of `run` (checked against SHA256SUMS), or None when there is none;
    d: another folder of that form (a resume pair)."""
    d = d or model_dir(run)
    sums = os.path.join(d, SUMS)
    if not os.path.isfile(sums):
        return None
    model = None
    with open(sums) as f:
        for line in f:
            digest, name = line.split()
            path = os.path.join(d, name)
            if not os.path.isfile(path) or sha256(path) != digest:
                raise MtdnetError(f"{path}: missing or not the published file (sha256 differs from {sums})")
            if name.endswith(".caffemodel"):
                model = path
    return model


def resume_dir(run):
    return os.path.join(run.project.models_dir, "resume", run.name)


def publish_resume(run):
    """Keep the run's newest good snapshot pair, run.json and gzipped train.log in
    models/resume/<run name>/ (replacing an older pair as a whole)."""
    state = caffe_run.good_snapshot(run.snapshot_prefix, run.project.root)
    if not state:
        raise MtdnetError(f"{run.snapshot_prefix}_iter_*.solverstate: no complete snapshot pair to keep")
    model = caffe_run.model_of(state)
    out = resume_dir(run)
    with atomic_dir(out, guard=(_ours, "a resume pair", "Move your own files out of it first.")) as tmp:
        names = [os.path.basename(state), os.path.basename(model), "run.json"]
        for src, name in zip((state, model, run.info), names):
            shutil.copyfile(src, os.path.join(tmp, name))
        if os.path.exists(run.log):
            with open(run.log, "rb") as f, gzip.open(os.path.join(tmp, "train.log.gz"), "wb") as g:
                shutil.copyfileobj(f, g)
            names.append("train.log.gz")
        atomic_write_text(os.path.join(tmp, "README.md"),
                          f"# {run.name}: resume pair\n\nIteration {caffe_run.snapshot_iter(state)} of a run "
                          f"still training. `{run.commands()[0]} ITERS=<n>` on a machine without "
                          f"{run.project.rel(run.dir)}/ continues from it; check the files with "
                          f"`sha256sum -c {SUMS}`.\n")
        atomic_write_text(os.path.join(tmp, SUMS), "".join(f"{sha256(os.path.join(tmp, n))}  {n}\n"
                                                             for n in names + ["README.md"]))
    return out


def restore_resume(run):
    """Copy a kept resume pair into the run's folder (checked against SHA256SUMS): returns the
    restored .solverstate and the run.json dict, or (None, {}) when there is none."""
    d = resume_dir(run)
    sums = os.path.join(d, SUMS)
    if not os.path.isfile(sums):
        return None, {}
    with open(sums) as f:
        names = [line.split()[1] for line in f if line.strip()]
    published(run, d)   # every file as recorded
    state = next(n for n in names if n.endswith(".solverstate"))
    os.makedirs(run.snapshot_dir, exist_ok=True)
    for n in names:
        if n.endswith(".caffemodel"):
            shutil.copyfile(os.path.join(d, n), os.path.join(run.snapshot_dir, n))
    # The solver state names its model by the path it was written to: point it at the copy
    # (Caffe reads it relative to the project root, where it runs).
    st = caffe_pb2.SolverState()
    with open(os.path.join(d, state), "rb") as f:
        st.ParseFromString(f.read())
    st.learned_net = run.project.rel(os.path.join(run.snapshot_dir, os.path.basename(st.learned_net)))
    atomic_write_bytes(os.path.join(run.snapshot_dir, state), st.SerializeToString())
    if "train.log.gz" in names:
        with gzip.open(os.path.join(d, "train.log.gz"), "rb") as g, open(run.log, "wb") as f:
            shutil.copyfileobj(g, f)
    return os.path.join(run.snapshot_dir, state), read_json(os.path.join(d, "run.json"), "run record")

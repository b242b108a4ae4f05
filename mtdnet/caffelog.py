"""Reading Caffe's logs: the one parser for `caffe train` and `caffe time` output.

Used by the training driver (progress and NaN stop, line by line), the loss
pictures (a whole log) and the benchmarks (iteration timestamps, `caffe time`).
"""
import datetime
import re

from core import MtdnetError

_NUM = r"([-+]?(?:nan|inf|[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?))"
_ITER_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUM, re.I)
_TRAIN_OUT = re.compile(r"Train net output #(\d+): (\S+) = " + _NUM
                        + r"(?: \(\* " + _NUM + r" = )?", re.I)
_ITER_LR = re.compile(r"Iteration (\d+), lr = " + _NUM, re.I)
_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
_TEST_OUT = re.compile(r"Test net output #(\d+): (\S+) = " + _NUM, re.I)


def parse_caffe_log(text):
    """Numbers of a `caffe train` log (text) -> dict.

    {"iterations": [N...], "loss": [X...]}  from "Iteration N ..., loss = X"
    (Caffe's smoothed total loss), "outputs": {name: ([N...], [X...])} from
    the "Train net output #k: name = X (* w = wX loss)" lines after each of
    them (X: the raw, unweighted value), "loss_weights": {name: w}, "lr":
    ([N...], [X...]), "test": {name: ([N...], [X...])}. NaN stays NaN.
    A resumed run appended to the same log supersedes: when the iteration
    goes back, the points from there on are dropped.
    """
    it, loss, lr_it, lr = [], [], [], []
    outputs, test, weights = {}, {}, {}
    cur = None
    test_it = None

    def drop_from(n):
        def cut(xs, ys):
            keep = [i for i, x in enumerate(xs) if x < n]
            xs[:], ys[:] = [xs[i] for i in keep], [ys[i] for i in keep]
        cut(it, loss)
        cut(lr_it, lr)
        for xs, ys in list(outputs.values()) + list(test.values()):
            cut(xs, ys)

    for line in text.splitlines():
        m = _ITER_LOSS.search(line)
        if m:
            n = int(m.group(1))
            if it and n <= it[-1]:
                drop_from(n)
            it.append(n)
            loss.append(float(m.group(2)))
            cur = n
            continue
        m = _TRAIN_OUT.search(line)
        if m and cur is not None:
            xs, ys = outputs.setdefault(m.group(2), ([], []))
            xs.append(cur)
            ys.append(float(m.group(3)))
            if m.group(4) is not None:
                weights[m.group(2)] = float(m.group(4))
            continue
        m = _ITER_LR.search(line)
        if m:
            lr_it.append(int(m.group(1)))
            lr.append(float(m.group(2)))
            continue
        m = _TESTING.search(line)
        if m:
            test_it = int(m.group(1))
            continue
        m = _TEST_OUT.search(line)
        if m and test_it is not None:
            xs, ys = test.setdefault(m.group(2), ([], []))
            xs.append(test_it)
            ys.append(float(m.group(3)))
    return {"iterations": it, "loss": loss, "outputs": outputs, "loss_weights": weights,
            "lr": (lr_it, lr), "test": test}


def read_caffe_log(path):
    """parse_caffe_log of a file; a missing file or one without loss lines is an error."""
    try:
        with open(path, errors="replace") as f:
            parsed = parse_caffe_log(f.read())
    except FileNotFoundError:
        raise MtdnetError(f"{path}: Caffe log not found") from None
    if not parsed["iterations"]:
        raise MtdnetError(f"{path}: no 'Iteration N, loss = X' lines (not a caffe train log, "
                          f"or training has not displayed a loss yet)")
    return parsed


# Line by line, while Caffe runs: "Iteration N (x iter/s, ...), loss = X" after each
# display, and "Iteration N, lr = X" (a first sign of progress when display is sparse).
def progress(line):
    """(iteration, loss or None) a training log line reports, or None. A loss Caffe
    prints as nan / inf comes back as that float."""
    m = _ITER_LOSS.search(line)
    if m:
        return int(m.group(1)), _to_float(m.group(2))
    m = _ITER_LR.search(line)
    if m:
        return int(m.group(1)), None
    return None


def _to_float(s):
    try:
        return float(s)
    except ValueError:
        return float("nan")


_GLOG_TIME = re.compile(r"^[IWEF](\d{4})?(\d{4}) (\d\d):(\d\d):(\d\d\.\d+)")
_DISPLAY = re.compile(r"solver\.cpp:\d+\] Iteration (\d+), loss = ")


def iteration_times(log_text):
    """{iteration: seconds since the log's first timed line} of Caffe's display lines."""
    out, first = {}, None
    for line in log_text.splitlines():
        m, d = _GLOG_TIME.match(line), _DISPLAY.search(line)
        if not (m and d):
            continue
        year = int(m.group(1)) if m.group(1) else 2000
        stamp = datetime.datetime(year, int(m.group(2)[:2]), int(m.group(2)[2:]), int(m.group(3)),
                                  int(m.group(4))) + datetime.timedelta(seconds=float(m.group(5)))
        first = first or stamp
        out[int(d.group(1))] = (stamp - first).total_seconds()
    return out


def caffe_time_ms(log_text):
    """[ms of each timed iteration] of a `caffe time` log."""
    its = [float(x) for x in re.findall(r"Iteration: \d+ forward-backward time: ([\d.]+) ms", log_text)]
    if not its:
        raise MtdnetError("caffe time printed no 'forward-backward time' line:\n" + log_text[-2000:])
    return its


def caffe_time_layers(log_text):
    """{layer: mean forward + backward ms} of a `caffe time` log's per-layer table."""
    out = {}
    for layer, _, ms in re.findall(r"\]\s+(\S+)\t(forward|backward): ([\d.eE+-]+) ms", log_text):
        out[layer] = out.get(layer, 0.0) + float(ms)
    return out


# What Caffe was writing when it died: "Snapshotting to binary proto file <model>" and
# "Snapshotting solver state to binary proto file <state>" come before each write.
_SNAPSHOTTING = re.compile(r"Snapshotting (?:solver state )?to (?:binary proto|HDF5) file (\S+)")
_FATAL = re.compile(r"^F(?:\d{4}){1,2} [\d:.]+ +\d+ [\w.]+:\d+\] (.*)")
_CPU_ONLY = "Cannot use GPU in CPU-only Caffe"


def snapshotting(line):
    """The snapshot file a log line says Caffe starts writing, or None."""
    m = _SNAPSHOTTING.search(line)
    return m.group(1) if m else None


def fatal(line):
    """The message of a glog fatal line (a failed CHECK: Caffe aborts), or None."""
    m = _FATAL.match(line)
    return m.group(1).strip() if m else None


def cpu_only(text):
    """Whether Caffe refused a GPU solver because it is a CPU-only build."""
    return _CPU_ONLY in text

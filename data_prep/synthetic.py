"""The synthetic re-ID dataset: seeded drawings of people in VIPeR's layout.

Identities differ by clothing colours and patterns, lower-body garment, bag,
hair and body shape; colours come from a small palette, so many people share
their colours and differ only in pattern, shape or accessories (a colour
histogram cannot tell them apart). The two cameras differ by illumination,
colour cast, contrast, blur and noise, person scale and position, background
(outdoor street / indoor hall) and viewpoint (camera A mostly sees people
from the front, camera B from the back or side; a chest print or a backpack
shows in one view only). Each image also varies its walking phase,
background and lighting. Files: cam_a/NNN_AAA.bmp, cam_b/NNN_AAA.bmp
(NNN person, AAA viewing angle), 128x48 like VIPeR, and synthetic.json with
the parameters, the seed and the test identities.
"""
import os

import cv2
import numpy as np
from tqdm import tqdm

from core import MtdnetError
from core.fsutil import atomic_dir, atomic_write_json, os_error, read_json, require_replaceable
from core.locks import exclusive
from data_prep.records import remove_stale_partials

VERSION = 1
DEFAULTS = {"num_ids": 300, "num_test": 100, "seed": 2017, "height": 128, "width": 48}
SUPER = 2   # drawn at 2x then downsampled: smooth edges like a real camera

# BGR, 0..255. Dark and neutral colours are common, as in real clothing.
PALETTE = {
    "black": (30, 30, 30), "white": (225, 225, 225), "grey": (120, 120, 120),
    "navy": (90, 40, 30), "blue": (180, 100, 40), "red": (40, 40, 190),
    "maroon": (40, 30, 110), "green": (60, 130, 50), "olive": (50, 110, 110),
    "khaki": (120, 170, 195), "brown": (40, 70, 110), "yellow": (40, 200, 220),
    "pink": (180, 140, 230), "purple": (120, 50, 110),
}
UPPER = ["black", "white", "grey", "navy", "blue", "red", "maroon", "green", "olive",
         "khaki", "brown", "yellow", "pink", "purple"]
UPPER_P = [10, 8, 8, 8, 7, 7, 5, 5, 4, 5, 5, 4, 4, 4]
LOWER = ["black", "navy", "blue", "grey", "khaki", "brown", "white", "olive"]
LOWER_P = [14, 8, 12, 7, 5, 4, 2, 3]
PATTERNS = ["solid", "hstripes", "vstripes", "checks", "print", "jacket", "twotone"]
PATTERN_P = [30, 15, 10, 10, 15, 12, 8]
SKIN = [(90, 120, 170), (120, 160, 215), (60, 90, 140), (150, 180, 225)]
HAIR = [(20, 20, 25), (30, 45, 70), (60, 100, 140), (120, 120, 125)]

# Viewing angle (VIPeR's AAA) -> (width factor, shows front, side view)
VIEWS = {0: (1.0, True, False), 45: (0.85, True, False), 90: (0.6, None, True),
         135: (0.85, False, False), 180: (1.0, False, False)}
CAMERAS = [
    # camera A: sunny street, warm cast, bright, sharp, people large; mostly frontal
    dict(angles=(0, 45, 90), angle_p=(0.45, 0.3, 0.25), gain=1.06, cast=(0.94, 1.0, 1.06),
         gamma=0.97, contrast=1.0, offset=0.0, blur=0.4, noise=2.0, scale=(0.86, 0.97),
         dx=0.06, background="street"),
    # camera B: indoor hall, cool cast, dim, washed out, blurrier, people smaller; back/side
    dict(angles=(90, 135, 180), angle_p=(0.35, 0.3, 0.35), gain=0.9, cast=(1.06, 1.01, 0.94),
         gamma=1.03, contrast=0.92, offset=8.0, blur=0.7, noise=3.5, scale=(0.76, 0.88),
         dx=0.14, background="hall"),
]


def _pick(rng, names, p):
    p = np.asarray(p, float)
    return names[rng.choice(len(names), p=p / p.sum())]


def _jitter(rng, bgr, amount=28):
    return np.clip(np.asarray(bgr, float) + rng.normal(0, amount, 3), 0, 255)


def _grey_jitter(rng, bgr, amount):
    """Mostly brightness, little hue: backgrounds are greyish like real streets and halls."""
    return np.clip(np.asarray(bgr, float) + rng.normal(0, amount) + rng.normal(0, amount / 4, 3), 0, 255)


def _blotches(rng, h, w, amount):
    """Low-frequency texture (foliage, stains, shadows), so the background is not flat."""
    small = rng.normal(0, amount, (int(rng.integers(4, 9)), int(rng.integers(2, 5)), 1)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]


def sample_person(rng):
    """One identity's appearance: everything that stays the same across cameras."""
    upper = _pick(rng, UPPER, UPPER_P)
    upper2 = _pick(rng, [c for c in UPPER if c != upper], [1] * (len(UPPER) - 1))
    return dict(
        height=rng.uniform(0.8, 0.97), build=rng.uniform(0.2, 0.3), head=rng.uniform(0.058, 0.072),
        torso=rng.uniform(0.29, 0.36),
        skin=_jitter(rng, SKIN[rng.integers(len(SKIN))], 8),
        hair=_jitter(rng, HAIR[rng.integers(len(HAIR))], 8), hair_long=rng.random() < 0.3,
        upper=_jitter(rng, PALETTE[upper]), upper2=_jitter(rng, PALETTE[upper2]),
        pattern=_pick(rng, PATTERNS, PATTERN_P), period=rng.uniform(0.035, 0.07),
        long_sleeves=rng.random() < 0.6,
        lower=_jitter(rng, PALETTE[_pick(rng, LOWER, LOWER_P)]),
        lower_kind=_pick(rng, ["trousers", "shorts", "skirt"], [7, 2, 1.5]),
        shoes=_jitter(rng, PALETTE[_pick(rng, ["black", "white", "brown", "grey"], [5, 2, 2, 1])], 10),
        bag=_pick(rng, ["none", "backpack", "shoulder"], [5, 3, 2]),
        bag_colour=_jitter(rng, PALETTE[_pick(rng, UPPER, UPPER_P)]), bag_side=rng.choice([-1, 1]),
    )


def _background(rng, kind, h, w):
    img = np.empty((h, w, 3), np.float32)
    y = np.linspace(0, 1, h)[:, None, None]
    if kind == "street":
        top = _grey_jitter(rng, (150, 165, 160), 30)
        ground = _grey_jitter(rng, (115, 125, 130), 25)
        horizon = rng.uniform(0.45, 0.65)
        img[:] = np.where(y < horizon, top * (1 - 0.3 * y), ground)
        for _ in range(rng.integers(2, 5)):   # buildings, windows, parked things
            x0, y0 = rng.integers(0, w), rng.integers(0, int(h * horizon))
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + rng.integers(8, w)), int(y0 + rng.integers(10, h // 3))),
                          _grey_jitter(rng, (120, 140, 140), 40).tolist(), -1)
        cv2.line(img, (0, int(h * horizon)), (w, int(h * horizon)), _grey_jitter(rng, (90, 95, 100), 15).tolist(),
                 max(2, h // 60))
    else:
        wall = _grey_jitter(rng, (150, 165, 175), 25)
        floor = _grey_jitter(rng, (80, 85, 95), 20)
        line = rng.uniform(0.55, 0.72)
        img[:] = np.where(y < line, wall, floor)
        step = int(rng.integers(h // 14, h // 8))
        for yy in range(int(h * line), h, step):   # floor tiles
            cv2.line(img, (0, yy), (w, yy), (floor * 0.8).tolist(), 1)
        for _ in range(rng.integers(1, 3)):   # pillars, doors
            x0 = int(rng.integers(-w // 4, w))
            cv2.rectangle(img, (x0, 0), (x0 + int(rng.integers(w // 8, w // 3)), int(h * line)),
                          _grey_jitter(rng, (120, 130, 140), 40).tolist(), -1)
    img += _blotches(rng, h, w, 14)
    return img


def _pattern_layer(p, view_front, box, ph, shape, phase):
    """The upper garment's texture (H x W x 3) in person-relative units."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x0, y0, x1, y1 = box
    u, v = (xx - (x0 + x1) / 2) / ph, (yy - y0) / ph
    period = p["period"]
    kind = p["pattern"]
    if kind == "hstripes":
        m = (np.floor(v / period) % 2) == 1
    elif kind == "vstripes":
        m = (np.floor(u / period + 0.5) % 2) == 1
    elif kind == "checks":
        m = ((np.floor(u / period) + np.floor(v / period)) % 2) == 1
    elif kind == "print":   # a chest print: only seen from the front
        m = (np.abs(u) < 0.06) & (v > 0.05) & (v < 0.15) if view_front else np.zeros_like(u, bool)
    elif kind == "jacket":  # an open jacket: the shirt shows in front only
        m = np.abs(u) < 0.035 if view_front else np.zeros_like(u, bool)
    elif kind == "twotone":
        m = v > (y1 - y0) / ph * 0.5
    else:
        m = np.zeros_like(u, bool)
    out = np.empty((h, w, 3), np.float32)
    out[:] = p["upper"]
    out[m] = p["upper2"]
    return out


def render(p, cam, rng, height, width):
    """One image (height x width x 3 uint8 BGR) of person p seen by camera cam."""
    H, W = height * SUPER, width * SUPER
    img = _background(rng, cam["background"], H, W)
    angle = int(rng.choice(cam["angles"], p=cam["angle_p"]))
    wf, front, side = VIEWS[angle]
    ph = p["height"] * rng.uniform(*cam["scale"]) * H
    feet = H - rng.uniform(0.01, 0.05) * H
    cx = W / 2 + rng.uniform(-cam["dx"], cam["dx"]) * W
    head_r = p["head"] * ph
    top = feet - ph
    y_sh = top + 2.1 * head_r
    y_hip = y_sh + p["torso"] * ph
    sw = p["build"] * ph / 2 * wf
    hw = sw * 0.82
    phase = rng.uniform(-1, 1)   # walking phase: arm swing and stride
    limb = max(2, int(0.075 * ph))
    leg = max(2, int(0.09 * ph))
    pt = lambda x, y: (int(round(x)), int(round(y)))
    col = lambda c: [float(v) for v in c]

    def draw_bag_behind():
        if p["bag"] == "backpack" and side:
            cv2.rectangle(img, pt(cx - sw - 0.09 * ph, y_sh + 0.02 * ph), pt(cx - sw * 0.5, y_sh + 0.22 * ph),
                          col(p["bag_colour"]), -1)

    # lower body
    draw_bag_behind()
    stride = (0.12 if side else 0.04) * ph * phase
    legs = [(cx - hw * 0.45, cx - hw * 0.45 - stride), (cx + hw * 0.45, cx + hw * 0.45 + stride)]
    knee = y_hip + 0.45 * (feet - y_hip)
    for x_top, x_foot in legs:
        lower_col = p["skin"] if p["lower_kind"] == "skirt" else p["lower"]
        cv2.line(img, pt(x_top, y_hip), pt(x_foot, feet - 0.02 * ph), col(lower_col), leg)
        if p["lower_kind"] == "shorts":
            cv2.line(img, pt((x_top + x_foot) / 2, knee), pt(x_foot, feet - 0.02 * ph), col(p["skin"]), leg)
        cv2.ellipse(img, pt(x_foot, feet - 0.015 * ph), (int(leg * 0.8), int(leg * 0.45)), 0, 0, 360,
                    col(p["shoes"]), -1)
    hips = np.array([pt(cx - hw, y_hip - 0.02 * ph), pt(cx + hw, y_hip - 0.02 * ph),
                     pt(cx + hw * 1.02, y_hip + 0.07 * ph), pt(cx - hw * 1.02, y_hip + 0.07 * ph)])
    cv2.fillPoly(img, [hips], col(p["lower"]))
    if p["lower_kind"] == "skirt":
        skirt = np.array([pt(cx - hw, y_hip - 0.02 * ph), pt(cx + hw, y_hip - 0.02 * ph),
                          pt(cx + hw * 1.5, y_hip + 0.24 * ph), pt(cx - hw * 1.5, y_hip + 0.24 * ph)])
        cv2.fillPoly(img, [skirt], col(p["lower"]))

    # upper body: torso and arms through a mask, so the pattern follows the garment
    mask = np.zeros((H, W), np.uint8)
    torso = np.array([pt(cx - sw, y_sh), pt(cx + sw, y_sh),
                      pt(cx + hw, y_hip + 0.01 * ph), pt(cx - hw, y_hip + 0.01 * ph)])
    cv2.fillPoly(mask, [torso], 255)
    arms = []
    swing = 0.1 * ph * phase
    if side:
        arms.append((pt(cx, y_sh + limb / 2), pt(cx + swing, y_hip + 0.06 * ph)))
    else:
        for s in (-1, 1):
            arms.append((pt(cx + s * (sw - limb / 2), y_sh + limb / 2),
                         pt(cx + s * (sw + 0.02 * ph) + s * abs(swing) * 0.3, y_hip + 0.05 * ph)))
    sleeve = np.zeros_like(mask)
    for a, b in arms:
        cv2.line(sleeve, a, b, 255, limb)
    if not p["long_sleeves"]:
        for a, b in arms:   # forearms are skin
            mid = pt(a[0] + 0.45 * (b[0] - a[0]), a[1] + 0.45 * (b[1] - a[1]))
            cv2.line(img, mid, b, col(p["skin"]), limb)
            cv2.line(sleeve, mid, b, 0, limb)
    mask = np.maximum(mask, sleeve)
    layer = _pattern_layer(p, bool(front), (cx - sw, y_sh, cx + sw, y_hip), ph, (H, W), phase)
    sel = mask > 0
    img[sel] = layer[sel]

    # bag in front of the body
    bc = col(p["bag_colour"])
    if p["bag"] == "backpack" and front is False:
        cv2.rectangle(img, pt(cx - sw * 0.7, y_sh + 0.03 * ph), pt(cx + sw * 0.7, y_sh + 0.23 * ph), bc, -1)
    elif p["bag"] == "backpack" and front:
        for s in (-1, 1):
            cv2.line(img, pt(cx + s * sw * 0.55, y_sh), pt(cx + s * sw * 0.5, y_sh + 0.18 * ph), bc, max(1, limb // 3))
    elif p["bag"] == "shoulder":
        s = p["bag_side"] * (1 if front is not False else -1)
        cv2.line(img, pt(cx - s * sw * 0.6, y_sh), pt(cx + s * hw, y_hip), bc, max(1, limb // 3))
        cv2.rectangle(img, pt(cx + s * hw - 0.05 * ph, y_hip - 0.04 * ph),
                      pt(cx + s * hw + 0.06 * ph, y_hip + 0.07 * ph), bc, -1)

    # head and hair
    hc = pt(cx + (0.02 * ph if side else 0), top + head_r)
    if p["hair_long"]:
        cv2.rectangle(img, pt(hc[0] - head_r, hc[1]), pt(hc[0] + head_r, y_sh + 0.07 * ph),
                      col(p["hair"]), -1)
    axes = (int(head_r * (0.8 if side else 0.9)), int(head_r))
    cv2.ellipse(img, hc, axes, 0, 0, 360, col(p["skin"] if front is not False else p["hair"]), -1)
    start = 180 if front else (90 if side else 0)
    cv2.ellipse(img, hc, axes, 0, start, 360, col(p["hair"]), -1)

    # the camera: scale down, blur, colour cast, gain, gamma, contrast, noise
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    if cam["blur"] > 0:
        img = cv2.GaussianBlur(img, (0, 0), cam["blur"] * rng.uniform(0.7, 1.3))
    cast = np.asarray(cam["cast"]) * rng.uniform(0.96, 1.04, 3)
    gain = cam["gain"] * rng.uniform(0.9, 1.1)
    shade = 1 - rng.uniform(0, 0.25) * np.linspace(0, 1, height)[:, None, None] * rng.choice([0, 1])
    img = np.clip(img * cast * gain * shade / 255.0, 0, 1) ** (cam["gamma"] * rng.uniform(0.9, 1.1))
    img = img * 255 * cam["contrast"] + cam["offset"]
    img = img + rng.normal(0, cam["noise"], img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), angle


def params(num_ids=None, num_test=None, seed=None, height=None, width=None):
    out = dict(DEFAULTS)
    for k, v in (("num_ids", num_ids), ("num_test", num_test), ("seed", seed),
                 ("height", height), ("width", width)):
        if v is not None:
            out[k] = int(v)
    if not 2 <= out["num_test"] < out["num_ids"] - 1 or out["num_ids"] > 1000:
        raise MtdnetError(f"synthetic: need 2 <= num_test < num_ids - 1 and num_ids <= 1000, "
                          f"got num_ids={out['num_ids']} num_test={out['num_test']}")
    out["version"] = VERSION
    return out


INFO = "synthetic.json"   # written last: it also marks the folder as generated here


def made_here(root):
    """Whether `root` holds a synthetic dataset this module generated (its synthetic.json)."""
    try:
        info = read_json(os.path.join(root, INFO))
    except MtdnetError:
        return False
    return isinstance(info, dict) and {"version", "seed", "num_ids", "test_ids"} <= set(info)


def guard(root):
    """atomic_dir's guard: the generator replaces only an empty folder or one it made."""
    return (made_here, "the synthetic dataset",
            "If this folder holds a real dataset, name it with DATASET= (e.g. DATASET=viper "
            f"DATA_ROOT={root}); otherwise leave DATA_ROOT out (the synthetic set goes to "
            "data/raw/synthetic) or give a new or empty folder.")


def _write_image(path, img):
    # cv2.imwrite reports success on a full disk and leaves a truncated file:
    # encode in memory and write with Python, which raises on a short write.
    ok, buf = cv2.imencode(".bmp", img)
    if not ok:
        raise MtdnetError(f"{path}: cannot encode the image")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def generate(root, progress=True, **kw):
    """Write the dataset to `root` (atomically; only a new or empty folder, or one it made
    itself, is replaced). Returns its synthetic.json content."""
    info = params(**kw)
    rng = np.random.default_rng(info["seed"])
    ids = np.arange(info["num_ids"])
    info["test_ids"] = sorted(int(i) for i in rng.choice(ids, info["num_test"], replace=False))
    remove_stale_partials(root)
    try:
        with atomic_dir(root, guard(root)) as tmp:
            for sub in ("cam_a", "cam_b"):
                os.makedirs(os.path.join(tmp, sub))
            for pid in tqdm(ids, desc="synthetic people", unit="id", disable=not progress, leave=False):
                prng = np.random.default_rng([info["seed"], int(pid)])   # per person: stable under num_ids
                person = sample_person(prng)
                for sub, cam in zip(("cam_a", "cam_b"), CAMERAS):
                    img, angle = render(person, cam, prng, info["height"], info["width"])
                    _write_image(os.path.join(tmp, sub, f"{pid:03d}_{angle}.bmp"), img)
            atomic_write_json(os.path.join(tmp, INFO), info)
    except OSError as e:
        raise os_error(e, root, f" while generating the synthetic dataset in {root} "
                                "(nothing was left under that name)") from None
    return info


def _count_bmp(d):
    return sum(f.endswith(".bmp") for f in os.listdir(d)) if os.path.isdir(d) else 0


def _have(root, want):
    info_path = os.path.join(root, INFO)
    if not os.path.isfile(info_path):
        return False
    have = read_json(info_path)
    complete = all(_count_bmp(os.path.join(root, sub)) == want["num_ids"] for sub in ("cam_a", "cam_b"))
    return complete and all(have.get(k) == v for k, v in want.items())


def ensure(root, progress=True, log=print, **kw):
    """Generate unless `root` already holds this exact dataset. Returns True if it generated.
    One command at a time generates into a folder (a second one stops: already running)."""
    want = params(**kw)
    root = os.path.abspath(root)
    if _have(root, want):
        return False
    require_replaceable(root, *guard(root))   # before the lock file is written beside it
    with exclusive(root, "make data (generating the synthetic dataset)"):
        if _have(root, want):   # made by a command that held the lock just before us
            return False
        log(f"generating the synthetic dataset in {root} ({want['num_ids']} people x 2 cameras, "
            f"seed {want['seed']})")
        generate(root, progress=progress, **kw)
    return True

"""The face renderer of the synthetic sets (``data.synth`` writes them in every protocol's layout).

Real face sets (MS1M, LFW, CFP, AgeDB, IJB-C, MegaFace) cannot ship with the package, so their
images are rendered here from a parametric face model.  Every identity has a persistent
appearance (head and jaw shape, skin tone, eye/brow/nose/mouth geometry and colours, hair style and
colour, ears, facial hair, glasses, skin texture blobs and moles); every image draws its own
nuisance (pose as a rotation of a head ellipsoid, alignment jitter, expression, illumination,
colour cast, blur, low resolution, noise, JPEG, occlusion, background clutter).  ``difficulty``
scales the nuisance.

The 5 landmarks (eye centres, nose tip, mouth corners, InsightFace order) of every image are the
projections of model points, so they are exact: aligned images are drawn with the similarity that
maps those landmarks, disturbed by detector-like noise, onto ``ARCFACE_TEMPLATE`` (the least-squares
similarity of InsightFace's ``norm_crop``); loose crops (``LOOSE``, IJB) on a larger canvas with
random scale, rotation and translation.

Determinism: identity ``i`` of namespace ``ns`` is a pure function of ``(seed, ns, i)``
(``identity``, ``keyed_rng``) and every image a pure function of its task tuple (``render_task``),
so the output bytes do not depend on the number of worker processes.

The rendering draws anti-aliased polygons with OpenCV at twice the output resolution and
downsamples with area averaging.
"""
import math

import cv2
import numpy as np

from shrinkteanet.core.constants import ARCFACE_TEMPLATE, IMAGE_SIZE
from shrinkteanet.data.align import estimate_similarity, template

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = float(1 << _SHIFT)
_SUPERSAMPLE = 2

_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 28, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 28, endpoint=False))], 1)

_HAIR_PALETTE = np.array([(22, 18, 16), (55, 38, 28), (100, 68, 42), (140, 100, 60), (205, 170, 110),
                          (150, 70, 35), (135, 132, 128), (215, 210, 200)], np.float64)
_HAIR_P = np.array([0.22, 0.22, 0.16, 0.1, 0.1, 0.07, 0.08, 0.05])
_IRIS_PALETTE = np.array([(45, 28, 18), (95, 58, 30), (125, 100, 50), (75, 110, 65), (70, 115, 170),
                          (115, 125, 135)], np.float64)
_IRIS_P = np.array([0.35, 0.25, 0.12, 0.1, 0.12, 0.06])
_SKIN_LIGHT = np.array([240, 205, 180], np.float64)
_SKIN_DARK = np.array([88, 56, 40], np.float64)


def keyed_rng(*keys):
    """A generator that is a pure function of integer keys (SeedSequence entropy)."""
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


def _clip_rgb(c):
    return np.clip(np.asarray(c, np.float64), 0, 255)


# --------------------------------------------------------------------------- identity


def sample_identity(rng):
    """Persistent appearance of one individual (face units = pixels of the 112 template frame,
    origin at the centre of the head ellipsoid, x right, y down).  The parts draw from ``rng``
    in a fixed order, so an identity is a pure function of its generator's seed."""
    g = {}
    _sample_head_and_eyes(rng, g)
    _sample_brows_nose_mouth(rng, g)
    _sample_colours(rng, g)
    _sample_hair_and_accessories(rng, g)
    _sample_skin_marks(rng, g)
    return g


def _sample_head_and_eyes(rng, g):
    a = rng.uniform(33, 43)
    g["a"] = a
    g["b"] = a * rng.uniform(1.18, 1.45)
    g["c"] = a * rng.uniform(0.8, 0.95)
    g["jaw"] = rng.uniform(0.45, 0.9)  # width kept at the chin
    g["chin"] = rng.uniform(0.3, 0.65)  # forward depth of the chin, fraction of c
    g["eye_y"] = rng.normal(-12.0, 2.5)
    g["eye_dx"] = rng.uniform(14.5, 19.5)
    g["eye_w"] = rng.uniform(4.5, 7.2)
    g["eye_h"] = rng.uniform(1.7, 3.3)
    g["eye_tilt"] = rng.uniform(-0.18, 0.18)
    g["iris_r"] = min(rng.uniform(2.0, 3.0), g["eye_w"] * 0.6)
    g["iris_rgb"] = _clip_rgb(_IRIS_PALETTE[rng.choice(len(_IRIS_PALETTE), p=_IRIS_P)] + rng.normal(0, 12, 3))


def _sample_brows_nose_mouth(rng, g):
    g["brow_gap"] = rng.uniform(4.5, 9.5)
    g["brow_th"] = rng.uniform(0.9, 3.2)
    g["brow_len"] = rng.uniform(10, 16.5)
    g["brow_arch"] = rng.uniform(-0.5, 3.2)
    g["brow_tilt"] = rng.uniform(-0.22, 0.22)
    g["brow_in"] = rng.uniform(-2.0, 3.0)
    g["nose_y"] = g["eye_y"] + rng.uniform(15.5, 24.5)
    g["nose_w"] = rng.uniform(3.6, 7.2)
    g["nose_depth"] = rng.uniform(8, 16)
    g["nostril"] = rng.uniform(0.9, 2.1)
    g["nose_shade"] = rng.uniform(0.06, 0.2)
    g["mouth_y"] = g["nose_y"] + rng.uniform(10.5, 18.5)
    g["mouth_w"] = rng.uniform(10.5, 16.5)
    g["lip_up"] = rng.uniform(1.1, 3.6)
    g["lip_lo"] = rng.uniform(1.6, 4.6)
    g["mouth_curve"] = rng.uniform(-1.2, 1.2)


def _sample_colours(rng, g):
    t = rng.uniform(0, 1) ** 1.2
    skin = _SKIN_LIGHT * (1 - t) + _SKIN_DARK * t + rng.normal(0, [9, 7, 7])
    g["skin_rgb"] = _clip_rgb(skin)
    g["lip_rgb"] = _clip_rgb(g["skin_rgb"] * 0.72 + np.array([175, 55, 70]) * 0.28 + rng.normal(0, 8, 3))
    hair = _HAIR_PALETTE[rng.choice(len(_HAIR_PALETTE), p=_HAIR_P)] + rng.normal(0, 10, 3)
    g["hair_rgb"] = _clip_rgb(hair)
    g["brow_rgb"] = _clip_rgb(g["hair_rgb"] * rng.uniform(0.55, 0.95))


def _sample_hair_and_accessories(rng, g):
    g["hairline"] = -g["b"] * rng.uniform(0.38, 0.72)
    g["hair_part"] = rng.uniform(-0.35, 0.35)
    g["hair_vol"] = rng.uniform(1.5, 11)
    g["hair_len"] = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
    g["bangs"] = bool(rng.uniform() < 0.22)
    g["bald"] = bool(rng.uniform() < 0.08)
    g["ear_w"] = rng.uniform(3.5, 6.0)
    g["ear_h"] = rng.uniform(8, 13)
    g["ear_y"] = g["eye_y"] + rng.uniform(2, 8)
    g["beard"] = rng.uniform(0.25, 0.9) if rng.uniform() < 0.18 else 0.0
    g["moustache"] = rng.uniform(0.4, 1.0) if rng.uniform() < 0.18 else 0.0
    g["glasses"] = bool(rng.uniform() < 0.14)
    g["glasses_rgb"] = _clip_rgb(rng.choice([20, 60, 120, 180]) + rng.normal(0, 15, 3))
    g["glasses_round"] = bool(rng.uniform() < 0.5)


def _sample_skin_marks(rng, g):
    """Moles, texture blobs, blush, age and the clothes colour."""
    a = g["a"]
    n = int(rng.poisson(1.2))
    g["moles"] = np.stack([rng.uniform(-0.6, 0.6, n) * a, rng.uniform(-0.3, 0.7, n) * g["b"],
                           rng.uniform(0.5, 1.3, n)], 1) if n else np.zeros((0, 3))
    n = int(rng.integers(5, 11))
    g["blobs"] = np.stack([rng.uniform(-0.7, 0.7, n) * a, rng.uniform(-0.55, 0.75, n) * g["b"],
                           rng.uniform(3, 9, n), rng.uniform(2, 7, n), rng.uniform(0, np.pi, n),
                           rng.normal(0, 0.07, n)], 1)
    g["blush"] = rng.uniform(0, 0.12)
    g["age"] = rng.uniform(0, 0.5)
    g["cloth_rgb"] = _clip_rgb(rng.uniform(20, 235, 3))


def age_identity(g, rng, amount=1.0):
    """Appearance drift of the same individual years apart (AgeDB-like): greyer and receding
    hair, wrinkles, a duller and darker skin texture, a heavier jaw, thinner brows,
    sometimes facial hair or glasses changing."""
    h = dict(g)
    grey = np.array([175, 172, 168.0])
    mix = min(1.0, amount * rng.uniform(0.3, 0.9))
    h["hair_rgb"] = _clip_rgb(g["hair_rgb"] * (1 - mix) + grey * mix)
    h["brow_rgb"] = _clip_rgb(g["brow_rgb"] * (1 - 0.6 * mix) + grey * 0.6 * mix)
    h["hairline"] = g["hairline"] - amount * rng.uniform(0, 0.25) * g["b"]
    h["bald"] = g["bald"] or rng.uniform() < 0.15 * amount
    h["age"] = min(1.0, g["age"] + amount * rng.uniform(0.4, 0.8))
    dull = amount * rng.uniform(0.05, 0.18)
    h["skin_rgb"] = _clip_rgb(g["skin_rgb"] * (1 - dull) + np.array([120, 100, 90]) * dull * 0.5)
    h["blobs"] = g["blobs"].copy()
    h["blobs"][:, 5] = g["blobs"][:, 5] - amount * rng.uniform(0.02, 0.08, len(g["blobs"]))
    h["a"] = g["a"] * (1 + amount * rng.uniform(0, 0.06))
    h["jaw"] = min(0.95, g["jaw"] + amount * rng.uniform(0, 0.12))
    h["brow_th"] = g["brow_th"] * (1 - amount * rng.uniform(0, 0.3))
    h["hair_vol"] = g["hair_vol"] * (1 - amount * rng.uniform(0, 0.5))
    h["lip_up"] = g["lip_up"] * (1 - amount * rng.uniform(0, 0.3))
    if rng.uniform() < 0.2 * amount:
        h["beard"] = 0.0 if g["beard"] else rng.uniform(0.3, 0.9)
    if rng.uniform() < 0.15 * amount:
        h["glasses"] = not g["glasses"]
    if rng.uniform() < 0.15 * amount:
        h["hair_len"] = int(rng.integers(0, 3))
    return h


def sample_nuisance(rng, difficulty=1.0, pose="normal"):
    """Per-image nuisance; amplitudes and probabilities scale with ``difficulty``.

    ``pose``: ``normal`` (LFW-like, mostly near frontal), ``frontal`` (CFP frontal member),
    ``profile`` (CFP profile member: strong yaw)."""
    d = float(difficulty)
    n = {}
    if pose == "frontal":
        n["yaw"] = rng.normal(0, 4) * min(d, 1.0)
        n["pitch"] = rng.normal(0, 3) * min(d, 1.0)
    elif pose == "profile":
        n["yaw"] = rng.choice([-1, 1]) * rng.uniform(42, 62)
        n["pitch"] = rng.normal(0, 5) * min(d, 1.5)
    else:
        n["yaw"] = float(np.clip(rng.normal(0, 12 * d), -45, 45))
        n["pitch"] = float(np.clip(rng.normal(0, 7 * d), -25, 25))
    n["roll"] = rng.normal(0, 8 * d)
    n["lm_noise"] = rng.normal(0, 1.2 * d, (5, 2))  # detector-like landmark error (template px)
    n["smile"] = float(np.clip(rng.normal(0.25, 0.35 * d), 0, 1))
    n["open"] = float(rng.uniform(0.2, 1.0)) if rng.uniform() < 0.18 * d else 0.0
    n["squint"] = float(rng.uniform(0.3, 0.9)) if rng.uniform() < 0.15 * d else 0.0
    n["brow_raise"] = rng.normal(0, 1.2 * d)
    n["gaze"] = rng.normal(0, 0.5 * d, 2)
    n["hair_jitter"] = rng.normal(0, 1.5 * d)
    # illumination: directional light on the head ellipsoid plus ambient
    az = rng.uniform(0, 2 * np.pi)
    el = rng.uniform(0.15, 1.0)
    n["light"] = np.array([math.cos(az) * (1 - el), math.sin(az) * (1 - el), el])
    n["light_k"] = float(np.clip(rng.uniform(0.1, 0.55) * d, 0, 0.85))
    n["gain"] = float(np.exp(rng.normal(0, 0.18 * d)))
    n["cast"] = np.exp(rng.normal(0, 0.07 * d, 3))
    n["gamma"] = float(np.exp(rng.normal(0, 0.15 * d)))
    n["desat"] = float(np.clip(rng.normal(0, 0.25 * d), 0, 1)) if rng.uniform() < 0.3 else 0.0
    n["blur"] = float(rng.uniform(0.3, 1.4 * d)) if rng.uniform() < min(0.9, 0.35 * d) else 0.0
    n["lowres"] = float(rng.uniform(0.3, 0.7)) if rng.uniform() < min(0.9, 0.12 * d) else 0.0
    n["noise"] = float(rng.uniform(0, 7 * d))
    n["jpeg"] = int(rng.uniform(15, 60)) if rng.uniform() < min(0.9, 0.15 * d) else 0
    occ = None
    if rng.uniform() < min(0.9, 0.14 * d):
        occ = str(rng.choice(["sunglasses", "mask", "hand", "bar", "hat"], p=[0.22, 0.2, 0.22, 0.2, 0.16]))
    n["occlusion"] = occ
    n["occ_rgb"] = _clip_rgb(rng.uniform(0, 255, 3))
    n["occ_pos"] = rng.uniform(-1, 1, 4)
    n["no_glasses"] = bool(rng.uniform() < 0.15)
    n["bg_rgb"] = rng.uniform(0, 255, 3)
    n["bg_items"] = int(rng.integers(0, 6))
    n["bg_seed"] = int(rng.integers(0, 2**31))
    n["noise_seed"] = int(rng.integers(0, 2**31))
    n["cloth_jitter"] = rng.normal(0, 25, 3)
    return n


# --------------------------------------------------------------------------- model


class _Shape:
    __slots__ = ("pts", "dz", "mode", "rgb", "thick", "closed")

    def __init__(self, pts, rgb, mode="surf", dz=0.0, thick=0.0, closed=True):
        self.pts = np.asarray(pts, np.float64)
        self.dz = dz
        self.mode = mode  # surf: on the head ellipsoid | sil: silhouette | fix: body, not rotated
        self.rgb = rgb
        self.thick = thick  # 0: filled polygon, else polyline width in face units
        self.closed = closed


def _ellipse(cx, cy, rx, ry, ang=0.0, t0=None, t1=None, n=None):
    if t0 is None:
        c = _CIRCLE
    else:
        t = np.linspace(t0, t1, n or 14)
        c = np.stack([np.cos(t), np.sin(t)], 1)
    x, y = c[:, 0] * rx, c[:, 1] * ry
    ca, sa = math.cos(ang), math.sin(ang)
    return np.stack([cx + x * ca - y * sa, cy + x * sa + y * ca], 1)


def _shade(rgb, k):
    return _clip_rgb(np.asarray(rgb) * k)


def _mix(c1, c2, t):
    return _clip_rgb(np.asarray(c1) * (1 - t) + np.asarray(c2) * t)


def _face_shapes(g, n):
    """Ordered drawing list of the face model (back to front) and the 5 landmark points
    (eye centres, nose tip, mouth corners: InsightFace order), in face units with depth."""
    hair = _clip_rgb(g["hair_rgb"])
    hv = max(0.5, g["hair_vol"] + n["hair_jitter"])
    jaw = _jaw_outline(g)
    S = _hair_behind(g, hair, hv) + _body_and_ears(g, n) + _head_and_skin(g, jaw) + _beard(g, jaw, hair)
    S += _nose(g)
    mouth, corners = _mouth(g, n)
    eyes, irises = _eyes(g, n)
    S += mouth + eyes + _glasses(g, n) + _hair_front(g, n, hair, hv) + _face_occluder(g, n)
    nose_tip = (0.0, g["nose_y"] + 0.5, g["nose_depth"])
    lm = [irises[0], irises[1], nose_tip, (corners[0][0], corners[0][1], 1.5), (corners[1][0], corners[1][1], 1.5)]
    return S, np.array(lm, np.float64)


def _hair_behind(g, hair, hv):
    """Medium and long hair: a silhouette behind the head."""
    if not g["hair_len"] or g["bald"]:
        return []
    a, b = g["a"], g["b"]
    y_end = b * (0.45 if g["hair_len"] == 1 else 1.5)
    w = a + hv * 0.8
    top = _ellipse(0, 0, w, b + hv, 0, np.pi, 2 * np.pi, 16)
    return [_Shape(np.concatenate([top, [[w, y_end], [-w, y_end]]]), _shade(hair, 0.85), "sil")]


def _body_and_ears(g, n):
    """Shoulders and neck (the body does not follow the head rotation), then the ears."""
    a, b, skin = g["a"], g["b"], g["skin_rgb"]
    cloth = _clip_rgb(g["cloth_rgb"] + n["cloth_jitter"])
    S = [_Shape(_ellipse(0, b * 2.15, a * 2.6, b * 1.05), cloth, "fix"),
         _Shape([[-a * 0.5, b * 0.3], [a * 0.5, b * 0.3], [a * 0.58, b * 1.35], [-a * 0.58, b * 1.35]],
                _shade(skin, 0.82), "fix")]
    for s in (-1, 1):
        S.append(_Shape(_ellipse(s * a * 0.97, g["ear_y"], g["ear_w"], g["ear_h"] / 2), _shade(skin, 0.93), "surf",
                        dz=-1.0))
    return S


def _jaw_outline(g):
    """The jaw polygon from the cheeks down to the chin, narrowing as ``g["jaw"]`` says."""
    a, b = g["a"], g["b"]
    ys = np.linspace(0, b, 12)
    w = a * np.sqrt(np.clip(1 - (ys / b) ** 2, 0, 1)) * (1 - (1 - g["jaw"]) * (ys / b) ** 1.5)
    w[-1] = 0.0
    return np.concatenate([np.stack([w, ys], 1), np.stack([-w[::-1], ys[::-1]], 1)])


def _head_and_skin(g, jaw):
    """Cranium silhouette plus the jaw on the surface (the chin moves with the face), the
    persistent skin texture (blobs, cheeks) and the wrinkles that grow with age."""
    a, b, skin = g["a"], g["b"], g["skin_rgb"]
    S = [_Shape(_ellipse(0, 0, a, b, 0, np.pi * 0.97, np.pi * 2.03, 20), skin, "sil")]
    dzj = g["c"] * g["chin"] * (jaw[:, 1] / b) ** 2
    S.append(_Shape(jaw, skin, "surf", dz=dzj))
    for x, y, rx, ry, ang, k in g["blobs"]:
        S.append(_Shape(_ellipse(x, y, rx, ry, ang), _shade(skin, 1 + k), "surf"))
    if g["blush"] > 0.02:
        for s in (-1, 1):
            S.append(_Shape(_ellipse(s * g["eye_dx"] * 1.1, g["nose_y"] - 2, 6, 4),
                            _mix(skin, (200, 70, 80), g["blush"]), "surf"))
    if g["age"] > 0.15:  # forehead lines and nasolabial folds
        dark = _shade(skin, 1 - 0.25 * g["age"])
        for i in range(1 + int(g["age"] * 3)):
            y = g["eye_y"] - g["brow_gap"] - 6 - 3.5 * i
            S.append(_Shape(_ellipse(0, y + 8, 14, 8, 0, np.pi * 1.2, np.pi * 1.8, 8), dark, "surf", thick=0.5,
                            closed=False))
        for s in (-1, 1):
            S.append(_Shape([[s * g["nose_w"] * 1.3, g["nose_y"] - 1], [s * (g["mouth_w"] + 2.5), g["mouth_y"] + 3]],
                            dark, "surf", thick=0.6 * g["age"] + 0.3, closed=False))
    return S


def _beard(g, jaw, hair):
    """Below the mouth along the jaw, as a colour mix of skin and hair."""
    if g["beard"] <= 0:
        return []
    inner = _ellipse(0, g["mouth_y"] + 1, g["mouth_w"] + 3, 6, 0, 0, np.pi, 10)
    outer = jaw[jaw[:, 1] > g["nose_y"]] * np.array([0.99, 1.0])
    pts = np.concatenate([outer, inner[::-1]])  # right cheek, chin, left cheek, back under the lip
    return [_Shape(pts, _mix(g["skin_rgb"], hair, g["beard"]), "surf", dz=0.5)]


def _nose(g):
    """Bridge shading, wedge, tip and nostrils."""
    skin = g["skin_rgb"]
    ny, nw, nd = g["nose_y"], g["nose_w"], g["nose_depth"]
    ns = _shade(skin, 1 - g["nose_shade"])
    bridge = np.array([[-1.5, g["eye_y"] + 1], [1.5, g["eye_y"] + 1], [nw * 0.55, ny - 1], [-nw * 0.55, ny - 1]])
    S = [_Shape(bridge, _shade(skin, 1 - g["nose_shade"] * 0.5), "surf", dz=np.array([1.0, 1.0, nd * 0.8, nd * 0.8]))]
    wedge = np.array([[0, g["eye_y"] + 3], [nw, ny + 1], [0, ny + 2.5], [-nw, ny + 1]])
    S.append(_Shape(wedge, ns, "surf", dz=np.array([1.5, 2.0, nd * 0.7, 2.0])))
    S.append(_Shape(_ellipse(0, ny, nw * 0.55, 2.2), _shade(skin, 1.04), "surf", dz=nd))
    for s in (-1, 1):
        S.append(_Shape(_ellipse(s * nw * 0.5, ny + 1.8, g["nostril"], g["nostril"] * 0.6), _shade(skin, 0.45),
                        "surf", dz=nd * 0.45))
    return S


def _mouth(g, n):
    """Lips, the open mouth and teeth, the moustache; expression moves the corners (and the
    landmarks with them).  Returns ``(shapes, (left corner, right corner))``."""
    mw = g["mouth_w"] * (1 + 0.12 * n["smile"])
    my = g["mouth_y"]
    lift = 3.0 * n["smile"] - 0.5 * g["mouth_curve"]
    op = 5.0 * n["open"]
    corners = (np.array([-mw, my - lift]), np.array([mw, my - lift]))
    xs = np.linspace(-mw, mw, 9)
    mid = my - lift + lift * (1 - (xs / mw) ** 2)  # the lip line sags to the centre when smiling
    up_top = mid - g["lip_up"] * (1 - (xs / mw) ** 2) ** 0.7 - 0.6 * np.abs(np.sin(xs / mw * np.pi)) * 0.5
    lo_bot = mid + op + g["lip_lo"] * (1 - (xs / mw) ** 2) ** 0.8
    S = []
    if op > 0:
        inner = np.concatenate([np.stack([xs, mid - 0.3], 1), np.stack([xs[::-1], (mid + op)[::-1]], 1)])
        S.append(_Shape(inner, (45, 20, 25), "surf", dz=1.0))
        if n["smile"] > 0.4:
            S.append(_Shape(np.concatenate([np.stack([xs * 0.7, mid], 1), np.stack([xs[::-1] * 0.7, mid[::-1] + op * 0.4], 1)]),
                            (225, 220, 205), "surf", dz=1.0))
    S.append(_Shape(np.concatenate([np.stack([xs, up_top], 1), np.stack([xs[::-1], mid[::-1]], 1)]),
                    _shade(g["lip_rgb"], 0.92), "surf", dz=1.5))
    S.append(_Shape(np.concatenate([np.stack([xs, mid + op], 1), np.stack([xs[::-1], lo_bot[::-1]], 1)]),
                    g["lip_rgb"], "surf", dz=1.5))
    S.append(_Shape(np.stack([xs, mid], 1), _shade(g["lip_rgb"], 0.55), "surf", dz=1.6, thick=0.6, closed=False))
    if g["moustache"] > 0:
        m = np.concatenate([np.stack([xs * 1.05, up_top - 0.6], 1), np.stack([xs[::-1] * 0.9, up_top[::-1] - 4.5], 1)])
        S.append(_Shape(m, _mix(g["skin_rgb"], _clip_rgb(g["hair_rgb"]), g["moustache"]), "surf", dz=2.0))
    return S, corners


def _eyes(g, n):
    """Per eye: sclera, iris, pupil, then the lids cut the iris; the brow above.  Returns
    ``(shapes, iris centres (x, y, dz))``, the eye landmarks."""
    skin = g["skin_rgb"]
    eh = g["eye_h"] * (1 - 0.55 * n["squint"])
    S, irises = [], []
    for s in (-1, 1):
        cx, cy = s * g["eye_dx"], g["eye_y"]
        tilt = -s * g["eye_tilt"]
        S.append(_Shape(_ellipse(cx, cy, g["eye_w"] + 1.2, eh + 1.4, tilt), _shade(skin, 0.85), "surf", dz=-1.0))
        upper = _ellipse(cx, cy, g["eye_w"], eh, tilt, np.pi, 2 * np.pi, 12)
        lower = _ellipse(cx, cy, g["eye_w"], eh * 0.7, tilt, 0, np.pi, 12)
        S.append(_Shape(np.concatenate([upper, lower]), (235, 232, 228), "surf", dz=-1.0))
        ix, iy = cx + n["gaze"][0], cy + n["gaze"][1] * 0.5
        S.append(_Shape(_ellipse(ix, iy, g["iris_r"], g["iris_r"]), g["iris_rgb"], "surf", dz=-0.8))
        S.append(_Shape(_ellipse(ix, iy, g["iris_r"] * 0.42, g["iris_r"] * 0.42), (12, 10, 10), "surf", dz=-0.7))
        lid = g["iris_r"] * 1.3 + 0.5
        up_band = np.concatenate([upper, (upper + [0, -lid])[::-1]])
        lo_band = np.concatenate([lower, (lower + [0, lid])[::-1]])
        S.append(_Shape(up_band, _shade(skin, 0.88), "surf", dz=-0.6))
        S.append(_Shape(lo_band, _shade(skin, 0.92), "surf", dz=-0.6))
        S.append(_Shape(upper, (25, 20, 20), "surf", dz=-0.5, thick=0.7, closed=False))
        S.append(_brow(g, n, s, cy))
        irises.append((ix, iy, -0.8))
    return S, irises


def _brow(g, n, s, cy):
    """The brow of side ``s`` (-1 left, 1 right) above the eye line ``cy``, tapering outwards."""
    bx = np.linspace(0, 1, 8)
    by = cy - g["brow_gap"] - n["brow_raise"] - g["brow_arch"] * np.sin(bx * np.pi) - g["brow_tilt"] * (bx - 0.5) * 10
    bxs = s * (g["eye_dx"] - g["brow_len"] / 2 + g["brow_in"] + bx * g["brow_len"])
    th = g["brow_th"] * (1 - 0.5 * bx)
    brow = np.concatenate([np.stack([bxs, by - th / 2], 1), np.stack([bxs[::-1], (by + th / 2)[::-1]], 1)])
    return _Shape(brow, g["brow_rgb"], "surf", dz=0.5)


def _glasses(g, n):
    """Round or square rims, temples and the bridge; none when the image drops them."""
    if not (g["glasses"] and not n["no_glasses"]):
        return []
    a, ey, ew, rgb = g["a"], g["eye_y"], g["eye_w"], g["glasses_rgb"]
    S = []
    for s in (-1, 1):
        cx = s * g["eye_dx"]
        if g["glasses_round"]:
            ring = _ellipse(cx, ey + 1, ew + 3.5, ew + 2)
        else:
            w_, h_ = ew + 4, ew + 1.5
            ring = np.array([[cx - w_, ey - h_ + 1], [cx + w_, ey - h_ + 1], [cx + w_, ey + h_ + 1], [cx - w_, ey + h_ + 1]])
        S.append(_Shape(ring, rgb, "surf", dz=3.0, thick=1.0))
        S.append(_Shape([[cx + s * (ew + 3.5), ey], [s * a * 0.97, ey - 1]], rgb, "surf", dz=2.0, thick=1.0,
                        closed=False))
    S.append(_Shape([[-g["eye_dx"] + ew + 3, ey], [g["eye_dx"] - ew - 3, ey]], rgb, "surf", dz=4.0, thick=1.0,
                    closed=False))
    return S


def _hair_front(g, n, hair, hv):
    """Hair cap in front (silhouette arc outside, hairline on the surface, bangs), or the
    side patches of a bald head."""
    a, b = g["a"], g["b"]
    if g["bald"]:
        S = []
        for s in (-1, 1):
            side = np.array([[s * a * 1.02, g["eye_y"] - 12], [s * a * 1.03, g["ear_y"] + 4],
                             [s * a * 0.9, g["ear_y"] + 2], [s * a * 0.9, g["eye_y"] - 10]])
            S.append(_Shape(side, hair, "surf"))
        return S
    yt = g["eye_y"] - 3
    arc = _ellipse(0, 0, a + hv * 0.7, b + hv, 0, np.pi * 0.93, np.pi * 2.07, 20)
    hl = g["hairline"] + n["hair_jitter"] * 0.3
    xs = np.linspace(a * 0.98, -a * 0.98, 15)
    u = xs / a
    line = hl + (yt - hl) * (np.abs(u) ** 2.5) + g["hair_part"] * 6 * u * (1 - np.abs(u))
    if g["bangs"]:
        fringe = g["eye_y"] - g["brow_gap"] - 4
        line = np.minimum(yt, np.maximum(line, fringe + 1.5 * np.sin(np.arange(15) * 2.1) - 2 * (u ** 2)))
    return [_Shape(np.concatenate([arc, np.stack([xs, line], 1)]), hair, "hair")]


def _face_occluder(g, n):
    """Face-attached occluders: sunglasses, mask, hand or hat (the bar is drawn in image space)."""
    a, b, occ, rgb, pos = g["a"], g["b"], n["occlusion"], n["occ_rgb"], n["occ_pos"]
    ny, nd = g["nose_y"], g["nose_depth"]
    S = []
    if occ == "sunglasses":
        for s in (-1, 1):
            S.append(_Shape(_ellipse(s * g["eye_dx"], g["eye_y"] + 1, g["eye_w"] + 3.5, g["eye_w"] + 1.5),
                            _shade(rgb, 0.25), "surf", dz=3.5))
        S.append(_Shape([[-g["eye_dx"], g["eye_y"]], [g["eye_dx"], g["eye_y"]]], (30, 30, 30), "surf", dz=4.0,
                        thick=1.2, closed=False))
    elif occ == "mask":
        top = ny - 3 + 3 * pos[0]
        pts = np.array([[-a * 0.92, top + 2], [0, top - 2], [a * 0.92, top + 2], [a * 0.7, b * 0.8], [0, b * 1.0],
                        [-a * 0.7, b * 0.8]])
        S.append(_Shape(pts, _mix(rgb, (235, 235, 235), 0.5), "surf", dz=np.array([1, nd, 1, 3, 6, 3.0])))
    elif occ == "hand":
        cx, cy = pos[0] * a * 0.5, ny + pos[1] * 14
        S.append(_Shape(_ellipse(cx, cy + 10, 14, 20, pos[2]), _shade(g["skin_rgb"], 0.95 + 0.1 * pos[3]), "surf",
                        dz=nd + 2))
    elif occ == "hat":
        brim = g["eye_y"] - g["brow_gap"] - 3 + 3 * pos[0]
        crown = _ellipse(0, brim, a + 4, b * 0.75, 0, np.pi, 2 * np.pi, 14)
        S.append(_Shape(crown, rgb, "hair"))
        S.append(_Shape([[-a - 6, brim - 2], [a + 6, brim - 2], [a + 6, brim + 2], [-a - 6, brim + 2]],
                        _shade(rgb, 0.8), "hair"))
    return S


def _surface_z(g, x, y):
    a, b, c = g["a"], g["b"], g["c"]
    return c * np.sqrt(np.clip(1 - (x / a) ** 2 - (y / b) ** 2, 0.0, 1.0))


def _rotate(x, y, z, yaw, pitch):
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    x1 = x * cy + z * sy
    z1 = -x * sy + z * cy
    y2 = y * cp - z1 * sp
    z2 = y * sp + z1 * cp
    return x1, y2, z2


_MODES = {"surf": 0, "sil": 1, "fix": 2, "hair": 3}


def _project_all(g, shapes, yaw, pitch):
    """Orthographic projection of every shape under the head rotation, in one vectorised pass.

    ``surf`` points sit on the head ellipsoid (plus their ``dz``) and rotate with it; ``sil``
    points scale like the ellipsoid's silhouette; ``fix`` points (the body) do not move;
    ``hair`` points on the ellipse boundary behave as silhouette, the rest as surface.
    Returns the stacked points, the per-shape slices and a per-shape visibility flag."""
    sizes = [len(sh.pts) for sh in shapes]
    pts = np.concatenate([sh.pts for sh in shapes])
    dz = np.concatenate([np.broadcast_to(np.asarray(sh.dz, np.float64), (k,)) for sh, k in zip(shapes, sizes)])
    mode = np.repeat(np.array([_MODES[sh.mode] for sh in shapes]), sizes)
    a, b, c = g["a"], g["b"], g["c"]
    x, y = pts[:, 0], pts[:, 1]
    ax = math.sqrt((a * math.cos(yaw)) ** 2 + (c * math.sin(yaw)) ** 2) / a
    by = math.sqrt((b * math.cos(pitch)) ** 2 + (c * math.sin(pitch)) ** 2) / b
    x1, y1, z1 = _rotate(x, y, _surface_z(g, x, y) + dz, yaw, pitch)
    sil = (mode == 1) | ((mode == 3) & ((x / a) ** 2 + (y / b) ** 2 >= 0.999))
    out = np.stack([np.where(sil, x * ax, x1), np.where(sil, y * by, y1)], 1)
    fix = mode == 2
    out[fix] = pts[fix]
    ends = np.cumsum(sizes)
    starts = ends - np.array(sizes)
    zsum = np.add.reduceat(np.where(mode == 0, z1, 1.0), starts)
    visible = zsum / np.array(sizes) > -0.5
    return out, list(zip(starts, ends)), visible


def _apply(M, pts):
    return pts @ M[:, :2].T + M[:, 2]


def _draw(canvas, pts, rgb, thick, closed):
    p = np.round(pts).astype(np.int32)
    color = tuple(float(v) for v in rgb)
    if thick <= 0:
        cv2.fillPoly(canvas, [p], color, lineType=cv2.LINE_AA, shift=_SHIFT)
    else:
        t = max(1, int(round(thick)))
        cv2.polylines(canvas, [p], closed, color, thickness=t, lineType=cv2.LINE_AA, shift=_SHIFT)


def _background(rng, h, w, rgb, items):
    img = np.empty((h, w, 3), np.uint8)
    # a smooth two-colour gradient plus a few clutter shapes
    rgb2 = np.clip(rgb + rng.normal(0, 40, 3), 0, 255)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img[:] = (rgb * (1 - t) + rgb2 * t).astype(np.uint8)
    for _ in range(items):
        c = tuple(float(v) for v in rng.uniform(0, 255, 3))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.uniform() < 0.5:
            cv2.rectangle(img, (int(x), int(y)), (int(x + rng.uniform(5, w / 2)), int(y + rng.uniform(5, h / 2))), c, -1)
        else:
            cv2.ellipse(img, (int(x), int(y)), (int(rng.uniform(3, w / 4)), int(rng.uniform(3, h / 4))),
                        float(rng.uniform(0, 180)), 0, 360, c, -1, cv2.LINE_AA)
    return img


def render(g, n, M_out=None, out_size=(IMAGE_SIZE, IMAGE_SIZE), lm_noise=True):
    """Render one face.

    ``M_out``: 2x3 map from projected face coordinates to output pixels (or a function of the
    projected landmarks returning it).  When None, it is the similarity that takes the
    projected landmarks (plus the nuisance's detector-like noise unless ``lm_noise`` is false) onto
    the ArcFace template scaled to ``out_size`` - an aligned face as InsightFace's
    preprocessing would produce it.  Returns ``(RGB uint8 (H,W,3), landmarks (5,2) float32
    in output pixels, matrix)``."""
    W, H = int(out_size[0]), int(out_size[1])
    yaw, pitch = math.radians(n["yaw"]), math.radians(n["pitch"])
    shapes, lm3 = _face_shapes(g, n)
    z = _surface_z(g, lm3[:, 0], lm3[:, 1]) + lm3[:, 2]
    lx, ly, _ = _rotate(lm3[:, 0], lm3[:, 1], z, yaw, pitch)
    lm = np.stack([lx, ly], 1)
    if callable(M_out):
        M_out = M_out(lm)
    if M_out is None:
        # the crop norm_crop would make at this size (InsightFace's template rule for non-112 sizes)
        tmpl = template(W) if W == H else ARCFACE_TEMPLATE.astype(np.float64) * (np.array([W, H]) / float(IMAGE_SIZE))
        noisy = lm + (n["lm_noise"] if lm_noise else 0.0)
        M_out = estimate_similarity(noisy, tmpl)
    ss = _SUPERSAMPLE if max(W, H) <= 160 else 1
    rng = keyed_rng(n["bg_seed"])
    canvas = _background(rng, H * ss, W * ss, n["bg_rgb"], n["bg_items"])
    scale_px = math.sqrt(abs(np.linalg.det(M_out[:, :2])))
    proj, spans, visible = _project_all(g, shapes, yaw, pitch)
    # pixel centres: output pixel x averages canvas pixels ss*x .. ss*x+ss-1 (INTER_AREA)
    proj = (_apply(M_out, proj) * ss + (ss - 1) / 2.0) * _ONE
    for sh, (i0, i1), vis in zip(shapes, spans, visible):
        if vis:
            _draw(canvas, proj[i0:i1], sh.rgb, sh.thick * scale_px * ss, sh.closed)
    if n["occlusion"] == "bar":
        p = n["occ_pos"]
        c = tuple(float(v) for v in n["occ_rgb"])
        x0, y0 = (0.5 + 0.4 * p[0]) * W * ss, (0.5 + 0.4 * p[1]) * H * ss
        ang = p[2] * np.pi
        L, T = W * ss * 0.8, (6 + 6 * abs(p[3])) * ss * W / 112.0
        q = np.array([[x0 - L * math.cos(ang), y0 - L * math.sin(ang)], [x0 + L * math.cos(ang), y0 + L * math.sin(ang)]])
        cv2.line(canvas, tuple(int(v) for v in q[0]), tuple(int(v) for v in q[1]), c, int(T), cv2.LINE_AA)
    img = cv2.resize(canvas, (W, H), interpolation=cv2.INTER_AREA) if ss > 1 else canvas
    img = _photometric(img, g, n, M_out, yaw, pitch)
    return img, _apply(M_out, lm).astype(np.float32), M_out


def _photometric(img, g, n, M, yaw, pitch):
    H, W = img.shape[:2]
    f = img.astype(np.float32)
    # Lambertian shading of the head ellipsoid under a directional light, in face coordinates
    Minv = cv2.invertAffineTransform(M.astype(np.float64))
    xs, ys = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    u = Minv[0, 0] * xs + Minv[0, 1] * ys + Minv[0, 2]
    v = Minv[1, 0] * xs + Minv[1, 1] * ys + Minv[1, 2]
    A = math.sqrt((g["a"] * math.cos(yaw)) ** 2 + (g["c"] * math.sin(yaw)) ** 2)
    B = math.sqrt((g["b"] * math.cos(pitch)) ** 2 + (g["c"] * math.sin(pitch)) ** 2)
    nx, ny = u / A, v / B
    r2 = nx * nx + ny * ny
    nz = np.sqrt(np.clip(1 - r2, 0, 1))
    L = n["light"] / np.linalg.norm(n["light"])
    lam = np.clip(nx * L[0] + ny * L[1] + nz * L[2], 0, 1)
    k = n["light_k"]
    inside = r2 < 1.0
    bg_shade = 1 - k * 0.5 + k * 0.5 * np.clip((xs / W - 0.5) * L[0] + (ys / H - 0.5) * L[1] + 0.5, 0, 1)
    shade = np.where(inside, (1 - k) + k * 1.25 * lam, bg_shade)
    f *= shade[..., None]
    f *= (n["gain"] * n["cast"]).astype(np.float32)
    if n["desat"] > 0:
        grey = f.mean(2, keepdims=True)
        f = f * (1 - n["desat"]) + grey * n["desat"]
    f = 255.0 * (np.clip(f, 0, 255) / 255.0) ** n["gamma"]
    if n["lowres"] > 0:
        sw, sh = max(8, int(W * n["lowres"])), max(8, int(H * n["lowres"]))
        f = cv2.resize(cv2.resize(f, (sw, sh), interpolation=cv2.INTER_AREA), (W, H), interpolation=cv2.INTER_LINEAR)
    if n["blur"] > 0:
        f = cv2.GaussianBlur(f, (0, 0), n["blur"] * W / 112.0)
    if n["noise"] > 0:
        f += keyed_rng(n["noise_seed"]).normal(0, n["noise"], f.shape).astype(np.float32)
    out = np.clip(f + 0.5, 0, 255).astype(np.uint8)
    if n["jpeg"]:
        from shrinkteanet.data.images import decode_image, encode_image

        out = decode_image(encode_image(out, n["jpeg"], subsampling="444"))
    return out


def faceness(n):
    """Detector-like confidence in (0, 1]: lower for strong pose, blur, low resolution, noise
    and occlusion (the 'faceness score' column of IJB's 5-point file)."""
    bad = (abs(n["yaw"]) / 90.0) ** 2 + 0.25 * n["blur"] + n["noise"] / 60.0
    bad += 0.8 * (1.0 - n["lowres"]) if n["lowres"] > 0 else 0.0
    bad += 0.5 if n["occlusion"] in ("mask", "sunglasses", "hand") else 0.0
    return float(np.clip(1.0 - 0.45 * bad, 0.05, 0.999))


# --------------------------------------------------------------------------- one image of a task

#: Default nuisance level.  Calibrated (docs/benchmarks.md, "Synthetic faces") so that a
#: tiny 64x64 CNN trained with a cosine-margin softmax on 400x20 synthetic identities reaches
#: 92-95% on the synthetic lfw.bin (96% at 1.0), 91% on cfp_fp and 83% on agedb_30, while the
#: raw-pixel cosine baseline stays near 66%: a real teacher lands in the 90s, below 100%.
DEFAULT_DIFFICULTY = 1.3

#: Strength of the AgeDB-like drift between the two members of an agedb_30 pair.
AGE_DRIFT = 0.7

LOOSE = "loose"
ALIGNED = "aligned"


def identity(seed, ns, index, drift=None):
    """Appearance of identity ``index`` of namespace ``ns``; ``drift`` (an int key) returns the
    same individual after an AgeDB-like appearance drift."""
    key = (int(seed), int(ns), int(index), -1 if drift is None else int(drift))
    g = _IDENTITY_CACHE.get(key)
    if g is None:
        g = sample_identity(keyed_rng(seed, ns, index, 0x1D))
        if drift is not None:
            g = age_identity(g, keyed_rng(seed, ns, index, 0xA6E, drift), AGE_DRIFT)
        if len(_IDENTITY_CACHE) > 4096:
            _IDENTITY_CACHE.clear()
        _IDENTITY_CACHE[key] = g
    return g


_IDENTITY_CACHE = {}


def _loose_layout(rng, W, H, roll_deg):
    """Un-aligned IJB-style crop: the face at a random scale, rotation and offset."""
    iod = rng.uniform(0.2, 0.32) * W
    ang = math.radians(roll_deg)
    off = rng.uniform(-0.08, 0.08, 2) * np.array([W, H])

    def layout(lm):
        eyes = lm[1] - lm[0]
        s = iod / max(1e-3, float(np.hypot(*eyes)))
        c, si = s * math.cos(ang), s * math.sin(ang)
        R = np.array([[c, -si], [si, c]])
        centre = lm.mean(0)
        t = np.array([W / 2.0, H * 0.5]) + off - R @ centre
        return np.concatenate([R, t[:, None]], 1)

    return layout


def render_task(task):
    """Render one image from a task tuple; pure function of the tuple.

    ``task = (seed, difficulty, ns, index, drift, key, pose, layout, size, quality, frame)``;
    returns ``(jpeg bytes, landmarks (5,2) float32, faceness, (W, H))``."""
    from shrinkteanet.data.images import encode_image

    seed, difficulty, ns, index, drift, key, pose, layout, size, quality, frame = task
    g = identity(seed, ns, index, drift)
    rng = keyed_rng(seed, ns, index, 0x1A6E, *key)
    n = sample_nuisance(rng, difficulty, pose)
    if frame is not None:
        # video frames of one media: same scene, small motion, fresh sensor noise
        fr = keyed_rng(seed, ns, index, 0xF4A, *key, frame)
        n["yaw"] += fr.normal(0, 2.5)
        n["pitch"] += fr.normal(0, 2.0)
        n["roll"] += fr.normal(0, 2.0)
        n["lm_noise"] = n["lm_noise"] + fr.normal(0, 0.5, (5, 2))
        n["noise_seed"] = int(fr.integers(0, 2**31))
    if layout == LOOSE:
        lr = keyed_rng(seed, ns, index, 0x100E, *key)
        W, H = int(lr.uniform(size[0], size[1])), int(lr.uniform(size[0], size[1]))
        img, lm, _ = render(g, n, _loose_layout(lr, W, H, n["roll"]), (W, H))
    else:
        W, H = size
        img, lm, _ = render(g, n, None, (W, H))
    jpg = encode_image(img, quality)
    return jpg, lm, faceness(n), (W, H)

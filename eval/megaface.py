"""MegaFace challenge 1: devkit feature files, noise cleaning and a built-in identification.

* Features follow InsightFace's ``gen_megaface.py``: ``emb(img) + emb(mirror)``,
  L2-normalised, one file per image ``<image name>_<algo>.bin`` holding struct
  ``'4i'`` = (rows=D, cols=1, OpenCV type 4, 5) and D float32 (the devkit's
  ``cv::Mat`` dump), under ``OUT/facescrub/<rel path>`` and ``OUT/megaface/<rel path>``,
  driven by the devkit's JSON lists.
* Noise cleaning follows InsightFace's ``remove_noises.py``: a FaceScrub image on the
  noise list gets ``normalize(center + U(-0.001, 0.001))`` where center is the sum of its
  identity's clean features (seeded here; InsightFace's draw was unseeded); a MegaFace
  distractor on the noise list gets a 513th value 100.0 (every clean feature gets 0.0), so
  under the devkit's L2 distance it can never be the nearest.  The built-in
  identification drops noisy distractors, which is the same thing.
* Built-in identification (CONTRACTS ``rank1_identification``): every ordered pair
  (i, j), i != j, of probes with the same identity is a trial; a hit at rank r when
  ``p_i . p_j`` is strictly greater than the r-th largest ``p_i . d`` over the distractors.
  Distractor scores come from blocked float32 matrix products over a memory-mapped
  feature matrix, keeping only per-probe maxima (one per distractor-set size), per-probe
  top-10 (CMC) and the global top impostor scores (TAR at FAR), so memory stays bounded.
  TAR at FAR: impostors = every (probe, distractor) pair of the largest set, genuine =
  the trials; threshold = the (floor(FAR * n_impostors) + 1)-th largest impostor score,
  accept when the score is strictly greater.
"""
import json
import os
import re
import struct
import subprocess
import sys

import numpy as np

from shrinkteanet.core.constants import MEGAFACE_SIZES
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.core.utils import atomic_open

log = get_logger(__name__)

#: The devkit's feature header: rows, cols, OpenCV type (CV_32F = 5 ... written as 4, 5 by InsightFace).
_HEADER = struct.Struct("<4i")
CMC_RANKS = 10
FACESCRUB_LIST = "facescrub_features_list.json"
_DISTRACTOR_LIST = re.compile(r"^megaface_features_list\.json_(\d+)_(\d+)$")


# ---------------------------------------------------------------- devkit feature files
def write_feature(path, vector):
    """One devkit feature file: ``struct '4i' (D, 1, 4, 5)`` then D little-endian float32.

    Written to a temp name and renamed (no fsync: a MegaFace run writes a million of
    these, and a crash leaves at most a stray ``.tmp``, never a short file under the name)."""
    v = np.ascontiguousarray(np.asarray(vector, dtype="<f4").reshape(-1))
    with atomic_open(path, "wb", durable=False) as f:
        f.write(_HEADER.pack(v.shape[0], 1, 4, 5))
        f.write(v.tobytes())


def read_feature(path):
    """Inverse of :func:`write_feature`; refuses a file whose header or length is wrong."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEADER.size:
        raise InputError(f"{path}: not a MegaFace feature file (shorter than its 16-byte header)")
    rows, cols, _, _ = _HEADER.unpack_from(data)
    n = rows * cols
    if rows <= 0 or cols <= 0 or len(data) != _HEADER.size + 4 * n:
        raise InputError(f"{path}: feature header says {rows}x{cols} float32 but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype="<f4", offset=_HEADER.size).astype(np.float32)


def feature_path(root, rel, algo):
    """``root/<rel>_<algo>.bin``; a list entry that leads outside ``root`` is an ``InputError``."""
    from shrinkteanet.core.utils import path_inside

    return path_inside(root, f"{rel}_{algo}.bin", f"MegaFace list entry {rel!r}")


# ---------------------------------------------------------------- lists
def _read_json(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise InputError(f"{path}: list not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 JSON (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply") from None


def read_facescrub_list(path):
    """Devkit ``facescrub_features_list.json``: ``{"path": [...], "id": [...]}`` -> (paths, ids)."""
    d = _read_json(path)
    if not isinstance(d, dict) or not isinstance(d.get("path"), list) or not isinstance(d.get("id"), list):
        raise InputError(f"{path}: expected a JSON object with lists 'path' and 'id'")
    if len(d["path"]) != len(d["id"]):
        raise InputError(f"{path}: 'path' has {len(d['path'])} entries but 'id' has {len(d['id'])}")
    return [str(p) for p in d["path"]], [str(i) for i in d["id"]]


def read_distractor_list(path):
    d = _read_json(path)
    if not isinstance(d, dict) or not isinstance(d.get("path"), list):
        raise InputError(f"{path}: expected a JSON object with a list 'path'")
    return [str(p) for p in d["path"]]


def find_distractor_lists(templatelists, set_no=1):
    """``{size: path}`` of the devkit's ``megaface_features_list.json_<SIZE>_<SET>`` files."""
    out = {}
    if os.path.isdir(templatelists):
        for name in os.listdir(templatelists):
            m = _DISTRACTOR_LIST.match(name)
            if m and int(m.group(2)) == int(set_no):
                out[int(m.group(1))] = os.path.join(templatelists, name)
    return dict(sorted(out.items()))


def read_noise_list(path, kind):
    """InsightFace noise lists: '#' lines are comments; a MegaFace line may be ``index<TAB>path``.
    FaceScrub entries match by file name (as ``remove_noises.py``) or by relative path."""
    keys = set()
    if path is None:
        return keys
    if not os.path.isfile(path):
        raise InputError(f"{path}: {kind} noise list not found")
    from shrinkteanet.core.utils import text_lines

    for _, line in text_lines(path):
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        parts = line.split("\t")
        keys.add(parts[1] if len(parts) > 1 else line)
    return keys


def plan_distractors(lists):
    """Order the distractors of all set sizes so that, when the sets are nested (the devkit's
    are), each size is a prefix: returns (paths in order, {size: count or index array})."""
    sizes = sorted(lists)
    order, seen = [], {}
    nested = True
    prev = set()
    for s in sizes:
        cur = lists[s]
        cur_set = set(cur)
        if not prev <= cur_set:
            nested = False
        prev = cur_set
    if nested:
        for s in sizes:
            for p in lists[s]:
                if p not in seen:
                    seen[p] = len(order)
                    order.append(p)
        return order, {s: len(lists[s]) for s in sizes}
    big = sizes[-1]
    for p in lists[big]:
        if p not in seen:
            seen[p] = len(order)
            order.append(p)
    for s in sizes[:-1]:
        for p in lists[s]:
            if p not in seen:
                seen[p] = len(order)
                order.append(p)
    return order, {s: np.array(sorted(seen[p] for p in set(lists[s])), np.int64) for s in sizes}


# ---------------------------------------------------------------- noise cleaning
def clean_probes(feats, ids, noisy, seed=0):
    """InsightFace's FaceScrub cleaning: each noisy probe -> normalize(center + U(-1e-3, 1e-3)),
    center = float32 sum of the clean features of the same identity."""
    feats = np.array(feats, dtype=np.float32, copy=True)
    ids = np.asarray(ids)
    noisy = np.asarray(noisy, dtype=bool)
    rng = np.random.RandomState(seed)
    for i in np.flatnonzero(noisy):
        clean = (ids == ids[i]) & ~noisy
        if not clean.any():
            raise InputError(f"facescrub: identity {ids[i]!r} has only noisy images; cannot rebuild its center")
        center = np.zeros(feats.shape[1], np.float32)
        for row in feats[clean]:
            center += row
        f = center + rng.uniform(-0.001, 0.001, feats.shape[1])
        feats[i] = (f / np.linalg.norm(f)).astype(np.float32)
    return feats


# ---------------------------------------------------------------- identification
def _merge_row_topk(top, rows, vals, k):
    """Per-row top-k (descending) of ``top`` (P, k) merged with candidate (row, value) pairs."""
    p = top.shape[0]
    all_rows = np.concatenate([np.repeat(np.arange(p), k), rows])
    all_vals = np.concatenate([top.reshape(-1), vals])
    order = np.lexsort((-all_vals, all_rows))
    all_rows, all_vals = all_rows[order], all_vals[order]
    starts = np.searchsorted(all_rows, np.arange(p))
    rank = np.arange(all_rows.size) - starts[all_rows]
    keep = rank < k
    out = np.full((p, k), -np.inf, np.float32)
    out[all_rows[keep], rank[keep]] = all_vals[keep]
    return out


def distractor_scores(probes, distractors, sizes=None, far=1e-6, block=8192, exclude=None, ranks=CMC_RANKS,
                      progress=True):
    """Stream ``probes @ distractors.T`` in column blocks (``distractors`` may be a memmap).

    ``sizes``: prefix lengths; returns ``maxima`` (len(sizes), P) = max score of each probe
    over the first n distractors, ``topk`` (P, ranks) over all rows, and ``imp_top`` = the
    ``floor(far * P * N) + 1`` largest impostor scores over all rows.  ``exclude``: boolean
    mask of distractor rows that never count (noise)."""
    from tqdm import tqdm

    probes = np.ascontiguousarray(probes, dtype=np.float32)
    n = distractors.shape[0]
    sizes = sorted(sizes) if sizes else [n]
    if sizes[-1] > n:
        raise InputError(f"distractor set size {sizes[-1]} exceeds the {n} distractor features")
    p = probes.shape[0]
    n_eval = sizes[-1]
    k_imp = int(np.floor(far * p * n_eval)) + 1
    maxima = np.full((len(sizes), p), -np.inf, np.float32)
    topk = np.full((p, ranks), -np.inf, np.float32)
    imp = np.empty(0, np.float32)
    imp_thr = -np.inf
    # block edges fall on every size boundary so a block belongs to whole prefixes only
    edges = sorted(set(list(range(0, n_eval, block)) + [s for s in sizes] + [n_eval]))
    spans = [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    for a, b in tqdm(spans, desc="megaface", unit="blk", disable=not progress, mininterval=2.0):
        d = np.asarray(distractors[a:b], dtype=np.float32)
        s = d @ probes.T  # (B, P): reductions over axis 0 are contiguous and vectorise
        if exclude is not None:
            ex = np.asarray(exclude[a:b], dtype=bool)
            if ex.any():
                s[ex] = -np.inf
        colmax = s.max(axis=0)
        for si, size in enumerate(sizes):
            if size >= b:
                np.maximum(maxima[si], colmax, out=maxima[si])
        # per-probe top-k for the CMC: only scores above the probe's current k-th can enter
        # only probes whose block maximum clears their bar are looked at again: after the first
        # blocks that is a small share, so these passes cost little next to the product
        kth = topk[:, -1]
        hit = np.flatnonzero(colmax > kth)
        if hit.size:
            sub = s[:, hit] if hit.size < p // 4 else s
            bar = kth[hit] if hit.size < p // 4 else kth
            r, c = np.nonzero(sub > bar[None, :])
            cols = hit[c] if hit.size < p // 4 else c
            topk = _merge_row_topk(topk, cols, sub[r, c], ranks)
        # global top impostors for TAR@FAR
        hot = np.flatnonzero(colmax > imp_thr)
        if hot.size:
            sub = s[:, hot] if hot.size < p // 4 else s
            vals = sub[sub > imp_thr]
            imp = np.concatenate([imp, vals])
            if imp.size > k_imp:
                imp = np.partition(imp, imp.size - k_imp)[imp.size - k_imp:]
            if imp.size >= k_imp:
                imp_thr = imp.min()
    return maxima, topk, imp


def _trials(labels):
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    return same


def identification(probe_feats, probe_labels, distractor_feats, sizes=None, far=1e-6, block=8192, exclude=None,
                   progress=True):
    """Challenge-1 identification on L2-normalised features (sizes are prefix lengths).

    Returns ``{"rank1": {size: rate}, "cmc": [rate at rank 1..10 for the largest size],
    "tar_at_far": TAR, "far": far, "threshold": thr, "num_trials": n, "num_probes": P}``."""
    probes = np.ascontiguousarray(probe_feats, dtype=np.float32)
    same = _trials(probe_labels)
    n_trials = int(same.sum())
    if n_trials == 0:
        raise InputError("megaface: no identity has two probe images, so there is no trial")
    sizes = sorted(sizes) if sizes else [distractor_feats.shape[0]]
    maxima, topk, imp = distractor_scores(probes, distractor_feats, sizes, far, block, exclude, progress=progress)
    g = probes @ probes.T
    rows, cols = np.nonzero(same)
    gen = g[rows, cols]
    rank1 = {int(sz): float(np.count_nonzero(gen > maxima[i][rows]) / n_trials) for i, sz in enumerate(sizes)}
    cmc = [float(np.count_nonzero(gen > topk[rows, r]) / n_trials) for r in range(topk.shape[1])]
    k_imp = int(np.floor(far * probes.shape[0] * sizes[-1])) + 1
    thr = float(np.sort(imp)[-k_imp]) if imp.size >= k_imp else -np.inf
    tar = float(np.count_nonzero(gen > thr) / n_trials)
    return {"rank1": rank1, "cmc": cmc, "tar_at_far": tar, "far": far, "threshold": thr,
            "num_trials": n_trials, "num_probes": int(probes.shape[0])}


def rank1_identification(probe_feats, probe_labels, distractor_feats):
    """CONTRACTS: hits / trials, a hit when ``p_i . p_j`` > ``p_i . d`` for every distractor d."""
    if not hasattr(distractor_feats, "shape"):
        distractor_feats = np.asarray(distractor_feats, dtype=np.float32)
    n = int(distractor_feats.shape[0])
    return identification(probe_feats, probe_labels, distractor_feats, [n], progress=False)["rank1"][n]


# ---------------------------------------------------------------- feature generation (model)
def _embed_normalised(embedder, paths, image_size, chunk, allow_missing, what):
    """Flip-fused, L2-normalised features of the image files, in chunks (gen_megaface.py)."""
    from sklearn.preprocessing import normalize
    from tqdm import tqdm

    from shrinkteanet.eval.embed import load_images

    feats, missing = None, []
    for a in tqdm(range(0, len(paths), chunk), desc=what, unit="chunk", disable=len(paths) <= chunk):
        imgs, miss = load_images(paths[a:a + chunk], image_size)
        missing += miss
        e = normalize(embedder.embed(imgs)).astype(np.float32)
        if feats is None:
            feats = np.empty((len(paths), e.shape[1]), np.float32)
        feats[a:a + len(e)] = e
    return feats, missing


def selected_distractor_lists(tl, set_no=1, sizes=None):
    """``{size: [relative paths]}`` of the devkit distractor lists in ``tl`` (all, or ``sizes``)."""
    lists = find_distractor_lists(tl, set_no)
    if not lists:
        raise InputError(f"{tl}: no megaface_features_list.json_<SIZE>_{set_no} distractor list")
    if sizes:
        absent = [s for s in sizes if s not in lists]
        if absent:
            raise InputError(f"{tl}: no distractor list for size(s) {absent}")
        lists = {s: lists[s] for s in sizes}
    return {s: read_distractor_list(p) for s, p in lists.items()}


def generate(embedder, root, out, algo="shrinkteanet", set_no=1, sizes=None, allow_missing=False,
             facescrub_noises=None, megaface_noises=None, seed=0, chunk=1024, image_size=112):
    """Embed FaceScrub + distractors from the devkit lists, write devkit features (raw and
    noise-cleaned) and the memory-mapped matrices for :func:`identification`."""
    tl = os.path.join(root, "templatelists")
    fs_paths, fs_ids = read_facescrub_list(os.path.join(tl, FACESCRUB_LIST))
    order, sets = plan_distractors(selected_distractor_lists(tl, set_no, sizes))

    raw, clean = os.path.join(out, "features"), os.path.join(out, "features_clean")
    # before any embedding: every feature file stays inside --out
    for kind, rels in (("facescrub", fs_paths), ("megaface", order)):
        for rel in rels:
            feature_path(os.path.join(raw, kind), rel, algo)
    fs_files = [os.path.join(root, "facescrub_images", p) for p in fs_paths]
    mf_files = [os.path.join(root, "megaface_images", p) for p in order]
    fs_feats, miss_fs = _embed_normalised(embedder, fs_files, image_size, chunk, allow_missing, "facescrub")
    mf_feats_mem, miss_mf = _embed_normalised(embedder, mf_files, image_size, chunk, allow_missing, "megaface")
    missing = miss_fs + miss_mf
    if missing:
        listing = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        if not allow_missing:
            raise InputError(f"{len(missing)} image(s) missing or unreadable (use --allow-missing): {listing}")
        log.warning("%d image(s) missing or unreadable, left out: %s", len(missing), listing)
    miss = set(missing)
    fs_ok = np.array([f not in miss for f in fs_files])
    mf_ok = np.array([f not in miss for f in mf_files])

    fs_noise = read_noise_list(facescrub_noises, "facescrub")
    mf_noise = read_noise_list(megaface_noises, "megaface")
    fs_noisy = np.array([(p in fs_noise) or (os.path.basename(p) in fs_noise) for p in fs_paths], bool)
    mf_noisy = np.array([p in mf_noise for p in order], bool)

    fs_clean = clean_probes(fs_feats, fs_ids, fs_noisy & fs_ok, seed) if (fs_noisy & fs_ok).any() else fs_feats
    for i, rel in enumerate(fs_paths):
        if fs_ok[i]:
            write_feature(feature_path(os.path.join(raw, "facescrub"), rel, algo), fs_feats[i])
            write_feature(feature_path(os.path.join(clean, "facescrub"), rel, algo), np.r_[fs_clean[i], 0.0])
    for i, rel in enumerate(order):
        if mf_ok[i]:
            write_feature(feature_path(os.path.join(raw, "megaface"), rel, algo), mf_feats_mem[i])
            ext = 100.0 if mf_noisy[i] else 0.0
            write_feature(feature_path(os.path.join(clean, "megaface"), rel, algo), np.r_[mf_feats_mem[i], ext])
    mm_path = os.path.join(out, f"distractors_{algo}.npy")
    with atomic_open(mm_path, "wb") as f:
        np.save(f, mf_feats_mem)
    return {
        "probe_feats": fs_clean[fs_ok], "probe_ids": np.asarray(fs_ids)[fs_ok],
        "distractors": mm_path, "exclude": mf_noisy | ~mf_ok, "sets": sets, "order": order,
        "num_missing": len(missing), "missing": missing,
        "num_noisy_probes": int((fs_noisy & fs_ok).sum()), "num_noisy_distractors": int(mf_noisy.sum()),
    }


def evaluate_generated(gen, far=1e-6, block=8192, progress=True):
    """Built-in challenge 1 on what :func:`generate` produced; returns CONTRACTS fields plus curves."""
    dist = np.load(gen["distractors"], mmap_mode="r")
    sets = gen["sets"]
    sizes = sorted(sets)
    result = {"rank1": {str(s): None for s in MEGAFACE_SIZES}}
    if all(not isinstance(v, np.ndarray) for v in sets.values()):
        r = identification(gen["probe_feats"], gen["probe_ids"], dist, [sets[s] for s in sizes], far, block,
                           gen["exclude"], progress)
        by_size = {s: r["rank1"][sets[s]] for s in sizes}
        last = r
    else:  # sets not nested: one pass per size over its own rows
        by_size = {}
        for s in sizes:
            idx = sets[s]
            sub = dist[idx] if idx.size != dist.shape[0] else dist
            last = identification(gen["probe_feats"], gen["probe_ids"], sub, None, far, block,
                                  gen["exclude"][idx], progress)
            by_size[s] = last["rank1"][int(sub.shape[0])]
    for s in sizes:
        result["rank1"][str(s)] = by_size[s]
    result["tar_at_far_1e-06"] = last["tar_at_far"]
    result["num_probes"] = last["num_probes"]
    result["num_trials"] = int(last["num_trials"])  # ordered same-identity probe pairs at the largest set
    result["num_distractors"] = int(sizes[-1])
    curves = {"sizes": sizes, "rank1": [by_size[s] for s in sizes], "cmc": last["cmc"],
              "num_trials": last["num_trials"], "threshold": last["threshold"]}
    return result, curves


def run_devkit(devkit, out, algo, sizes, probe_list, results_dir):
    """Run the official devkit (``DEVKIT/experiments/run_experiment.py``) on the cleaned features,
    as InsightFace's ``run.sh`` does."""
    exp = os.path.join(devkit, "experiments")
    script = os.path.join(exp, "run_experiment.py")
    if not os.path.isfile(script):
        raise InputError(f"{script}: MegaFace devkit script not found (--devkit points at the devkit root)")
    clean = os.path.abspath(os.path.join(out, "features_clean"))
    cmd = [sys.executable, "-u", script, os.path.join(clean, "megaface"), os.path.join(clean, "facescrub"),
           f"_{algo}.bin", os.path.abspath(results_dir), "-s", *[str(s) for s in sizes], "-p",
           os.path.abspath(probe_list)]
    log.info("devkit: %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=exp)
    if proc.returncode != 0:
        raise InputError(f"{script}: devkit exited with status {proc.returncode}")
    return cmd

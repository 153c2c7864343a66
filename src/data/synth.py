"""Synthetic face-like identities in every data format of the project: the protocol writers.

The training set (RecordIO + ``.lst``), the three verification ``.bin`` targets, the IJB-C tree and
the MegaFace tree are written here from images that ``data.face_render`` renders (one task tuple per
image, mapped over worker processes by ``_Renderer``).  Each benchmark draws its own individuals (the
``NS_*`` namespaces), so the evaluation identities are disjoint from the training identities (open
set).  Aligned images (training set, ``.bin``, MegaFace) have their landmarks near the template up
to pose; IJB loose crops have theirs written to ``*_name_5pts_score.txt`` so that ``norm_crop``
turns each of them into a proper 112x112 face.

Determinism: every image is a pure function of its task tuple, so the output bytes do not depend
on the number of worker processes.
"""
import math
import os

import cv2
import numpy as np

from shrinkteanet.core.constants import IMAGE_SIZE, MEGAFACE_SIZES
from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.core.outputs import MIN_FREE, Output, check_outputs
from shrinkteanet.core.utils import process_pool
from shrinkteanet.data.face_render import ALIGNED, DEFAULT_DIFFICULTY, LOOSE, keyed_rng, render_task

log = get_logger(__name__)

# Namespaces of identity draws: each benchmark gets its own individuals, so the
# evaluation identities are disjoint from the training identities (open set).
NS_TRAIN, NS_LFW, NS_CFP, NS_AGEDB, NS_IJB, NS_MF_PROBE, NS_MF_DISTRACTOR = 1, 2, 3, 4, 5, 6, 7
#: the validation split (issue 26: tuning reads it, never a test set): its own namespace, so its
#: identities and pair draws are a stream apart and every other file keeps its bytes
NS_VAL = 8


class _Renderer:
    """Maps render_task over task lists, in worker processes when asked."""

    def __init__(self, workers=1, progress=True):
        self.workers = max(1, int(workers or 1))
        self.progress = progress
        self.pool = None
        self.count = 0

    def __enter__(self):
        if self.workers > 1:
            self.pool = process_pool(self.workers, initializer=_worker_init)
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def imap(self, tasks, desc):
        from tqdm import tqdm

        tasks = list(tasks)
        it = map(render_task, tasks) if self.pool is None else self.pool.imap(render_task, tasks, chunksize=16)
        for r in tqdm(it, total=len(tasks), unit="img", desc=desc, disable=not self.progress, leave=False):
            self.count += 1
            yield r


class _StagedDir:
    """A folder of many small files written as one unit: files go into a temporary sibling,
    which replaces ``final`` only when complete (temp + rename, without one fsync per file)."""

    def __init__(self, final):
        self.final = os.path.abspath(final)
        parent = os.path.dirname(self.final)
        os.makedirs(parent, exist_ok=True)
        import tempfile

        self.tmp = tempfile.mkdtemp(prefix="." + os.path.basename(self.final) + ".", suffix=".tmp", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        self.mode = 0o777 & ~umask  # mkdtemp's 0700 would hide the images from other users
        os.chmod(self.tmp, self.mode)

    def write(self, rel, data):
        path = os.path.join(self.tmp, rel)
        d = os.path.dirname(path)
        if not os.path.isdir(d):
            os.makedirs(d, mode=self.mode, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        import shutil

        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if os.path.isdir(self.final):
            old = self.tmp + ".old"
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)
        return False


def _worker_init():
    cv2.setNumThreads(1)


def _check(cond, msg):
    if not cond:
        raise InputError(msg)


def _face_bbox(lm, W, H):
    """Integer face box around the 5 landmarks (for the .lst bbox fields)."""
    c = lm.mean(0)
    s = max(float(np.hypot(*(lm[1] - lm[0]))), float(np.linalg.norm(lm[3:].mean(0) - lm[:2].mean(0))))
    x0, y0 = max(0, int(c[0] - 1.45 * s)), max(0, int(c[1] - 1.7 * s))
    x1, y1 = min(W, int(math.ceil(c[0] + 1.45 * s))), min(H, int(math.ceil(c[1] + 1.5 * s)))
    return [x0, y0, x1, y1]


#: The verification sets of the suite: (name, namespace, kind).
BINS = (("lfw", NS_LFW, "lfw"), ("cfp_fp", NS_CFP, "cfp"), ("agedb_30", NS_AGEDB, "agedb"))
#: The validation verification set: (name, namespace, kind); written only when ``val_pairs`` > 0.
VAL = ("val", NS_VAL, "lfw")
#: The training set's files in OUT.
TRAIN_FILES = ("train.rec", "train.idx", "property", "train.lst")


def rendered_images(identities, images_per_id, pairs, ijb_templates, megaface_probes, megaface_probe_images,
                    megaface_distractors, *, ijb=True, megaface=True, val_pairs=0):
    """How many images ``generate`` renders (four loose crops per IJB-C template)."""
    n = identities * images_per_id + len(BINS) * 2 * pairs + 2 * int(val_pairs)
    n += 4 * ijb_templates if ijb else 0
    n += megaface_probes * megaface_probe_images + megaface_distractors if megaface else 0
    return n


def estimate_bytes(images, image_size):
    """Disk space of ``images`` rendered faces, on the safe side: two copies (the set and its
    image tree) at 0.1 byte per pixel and channel, plus one 4 KiB block each (measured: 3.0 KB
    per rendered image at 32x32, 7.6 KB at 112x112)."""
    return int(images) * (2 * int(image_size) ** 2 * 3 // 10 + 4096)


def synth_outputs(out_dir, *, overwrite=False, ijb=True, megaface=True, need=0, val=False):
    """``core.outputs.Output`` of everything ``generate`` writes in ``out_dir``: without
    ``overwrite`` an existing file or tree of the suite is refused, naming it."""
    label = f"data synth {out_dir}"
    hint = "pass --overwrite to replace the set"
    files = TRAIN_FILES + tuple(f"{name}.bin" for name, _, _ in BINS + ((VAL,) if val else ()))
    folders = ("train_images",) + (("IJBC",) if ijb else ()) + (("megaface",) if megaface else ())
    outs = [Output(label, out_dir, kind="folder", need=max(int(need), MIN_FREE))]
    outs += [Output(label, os.path.join(out_dir, f), replace=overwrite, hint=hint) for f in files]
    return outs + [Output(label, os.path.join(out_dir, f), kind="folder", replace=overwrite, hint=hint)
                   for f in folders]


def generate(out_dir, identities=100, images_per_id=20, test_identities=100, pairs=600, ijb_templates=200,
             megaface_probes=20, megaface_probe_images=6, megaface_distractors=1000, megaface_noise=0.005,
             difficulty=DEFAULT_DIFFICULTY, image_size=IMAGE_SIZE, seed=0, ijb=True, megaface=True, workers=1,
             quality=95, progress=True, overwrite=False, val_pairs=0, val_identities=None):
    """Write the whole synthetic suite into ``out_dir`` (docs/design.md, Data):
    ``train.rec/.idx/property`` + ``train.lst`` (+ ``train_images/``), ``lfw.bin``, ``cfp_fp.bin``,
    ``agedb_30.bin``, ``IJBC/{meta,loose_crop}`` and ``megaface/``, and with ``val_pairs`` > 0 the
    validation set ``val.bin`` (``val_identities`` identities, default ``test_identities``, of their
    own namespace: disjoint from training and every test set).  An existing part of a suite
    is replaced only with ``overwrite`` (``synth_outputs``); the outputs are checked before
    anything is rendered (``core.outputs.check_outputs``).  Returns a summary dict."""
    _check(identities >= 2, f"--identities must be at least 2, got {identities}")
    _check(images_per_id >= 1, f"--images-per-id must be at least 1, got {images_per_id}")
    _check(test_identities >= 2, f"--test-identities must be at least 2, got {test_identities}")
    _check(pairs >= 2, f"--pairs must be at least 2, got {pairs}")
    _check(difficulty >= 0, f"--difficulty must be >= 0, got {difficulty}")
    _check_val(val_pairs, val_identities)
    _check(32 <= image_size <= 512, f"--image-size must be in 32..512, got {image_size}")
    if ijb:
        _check(ijb_templates >= 4, f"--ijb-templates must be at least 4, got {ijb_templates}")
    if megaface:
        _check(megaface_distractors >= MEGAFACE_SIZES[0],
               f"--megaface-distractors must be at least {MEGAFACE_SIZES[0]}, got {megaface_distractors}")
        _check(megaface_probes >= 2, f"--megaface-probes must be at least 2, got {megaface_probes}")
        _check(megaface_probe_images >= 2, f"--megaface-probe-images must be at least 2, got {megaface_probe_images}")
        _check(0 <= megaface_noise < 0.5, f"--megaface-noise must be in [0, 0.5), got {megaface_noise}")
    out_dir = os.fspath(out_dir)
    images = rendered_images(identities, images_per_id, pairs, ijb_templates, megaface_probes, megaface_probe_images,
                             megaface_distractors, ijb=ijb, megaface=megaface, val_pairs=val_pairs)
    check_outputs(synth_outputs(out_dir, overwrite=overwrite, ijb=ijb, megaface=megaface,
                                need=estimate_bytes(images, image_size), val=val_pairs > 0))
    os.makedirs(out_dir, exist_ok=True)
    size = (int(image_size), int(image_size))
    common = dict(seed=int(seed), difficulty=float(difficulty), size=size, quality=int(quality))
    summary = {"out_dir": os.path.abspath(out_dir), "seed": int(seed), "difficulty": float(difficulty),
               "image_size": int(image_size)}
    with _Renderer(workers, progress) as R:
        summary["train"] = _write_train(out_dir, R, identities, images_per_id, **common)
        summary["bins"] = {}
        for name, ns, kind in BINS:
            summary["bins"][name] = _write_bin(out_dir, R, name, ns, kind, test_identities, pairs, **common)
        if val_pairs:
            name, ns, kind = VAL
            summary["val"] = _write_bin(out_dir, R, name, ns, kind, val_identities or test_identities, val_pairs,
                                        **common)
        if ijb:
            summary["ijb"] = _write_ijb(out_dir, R, ijb_templates, **common)
        if megaface:
            summary["megaface"] = _write_megaface(out_dir, R, megaface_probes, megaface_probe_images,
                                                  megaface_distractors, megaface_noise, **common)
        summary["num_rendered"] = R.count
    log.info("synthetic suite in %s: %d images rendered", out_dir, R.count)
    return summary


def _check_val(val_pairs, val_identities):
    """``--val-pairs`` 0 (no validation set) or at least 2; ``--val-identities`` at least 2 when given."""
    _check(val_pairs == 0 or val_pairs >= 2, f"--val-pairs must be 0 or at least 2, got {val_pairs}")
    _check(val_identities is None or val_identities >= 2,
           f"--val-identities must be at least 2, got {val_identities}")


def _task(common, ns, index, key, pose="normal", layout=ALIGNED, size=None, drift=None, frame=None):
    return (common["seed"], common["difficulty"], ns, int(index), drift, tuple(int(k) for k in key), pose, layout,
            size or common["size"], common["quality"], frame)


def _write_train(out_dir, R, identities, images_per_id, **common):
    from shrinkteanet.data.lst import LstItem, write_lst
    from shrinkteanet.data.recordio import write_rec_set

    W, H = common["size"]
    tasks = [_task(common, NS_TRAIN, i, (k,)) for i in range(identities) for k in range(images_per_id)]
    items = []

    def samples(stage):
        for t, (jpg, lm, _, _) in zip(tasks, R.imap(tasks, "train")):
            label, k = t[3], t[5][0]
            rel = f"{label:06d}/{k:04d}.jpg"
            stage.write(rel, jpg)
            items.append(LstItem(True, "train_images/" + rel, label, _face_bbox(lm, W, H), lm))
            yield jpg, label

    with _StagedDir(os.path.join(out_dir, "train_images")) as stage:
        res = write_rec_set(out_dir, samples(stage), num_classes=identities, quality=common["quality"], workers=1,
                            image_size=(H, W), name="train", progress=False, total=len(tasks))
    write_lst(os.path.join(out_dir, "train.lst"), items)
    res["lst"] = os.path.join(out_dir, "train.lst")
    return res


def _pair_plan(seed, ns, test_identities, pairs):
    """Identity pairs of a verification target: even pairs same, odd pairs different, so any
    contiguous fold (InsightFace's 10 folds without shuffle) is balanced."""
    plan = []
    for p in range(pairs):
        r = keyed_rng(seed, ns, 0x9A1, p)
        if p % 2 == 0:
            i = int(r.integers(test_identities))
            plan.append((True, i, i))
        else:
            i, j = (int(v) for v in r.choice(test_identities, 2, replace=False))
            plan.append((False, i, j))
    return plan


def _write_bin(out_dir, R, name, ns, kind, test_identities, pairs, **common):
    from shrinkteanet.data.binfile import write_bin

    tasks, issame = [], []
    for p, (same, i, j) in enumerate(_pair_plan(common["seed"], ns, test_identities, pairs)):
        issame.append(same)
        if kind == "cfp":
            # CFP-FP: a frontal face against a strongly turned one, for same and different pairs
            tasks.append(_task(common, ns, i, (p, 0), pose="frontal"))
            tasks.append(_task(common, ns, j, (p, 1), pose="profile"))
        elif kind == "agedb":
            # AgeDB-30: the second member is the individual after a strong appearance drift
            tasks.append(_task(common, ns, i, (p, 0)))
            tasks.append(_task(common, ns, j, (p, 1), drift=p))
        else:
            tasks.append(_task(common, ns, i, (p, 0)))
            tasks.append(_task(common, ns, j, (p, 1)))
    jpegs = [r[0] for r in R.imap(tasks, name)]
    path = os.path.join(out_dir, name + ".bin")
    write_bin(path, jpegs, issame)
    return {"path": path, "pairs": len(issame), "same": int(sum(issame)), "identities": int(test_identities)}


def _ijb_plan(seed, num_templates):
    """Subjects -> templates -> media -> images, as IJB-C: several templates per subject, each
    over one or more media (a still or a few video frames)."""
    r = keyed_rng(seed, NS_IJB, 0x7E3)
    num_subjects = max(2, num_templates // 3)
    owner = np.arange(num_templates) % num_subjects
    owner = np.sort(owner)
    templates, images = [], []
    media_id = 0
    for t in range(num_templates):
        tid = t + 1
        subj = int(owner[t])
        for _ in range(int(r.integers(1, 4))):
            media_id += 1
            frames = [None] if r.uniform() < 0.6 else list(range(int(r.integers(2, 5))))
            for f in frames:
                images.append(dict(name=f"{len(images) + 1}.jpg", tid=tid, mid=media_id, subject=subj,
                                   key=(tid, media_id), frame=f))
        templates.append((tid, subj))
    return templates, images


def _write_ijb(out_dir, R, num_templates, **common):
    from shrinkteanet.core.utils import atomic_open

    seed = common["seed"]
    root = os.path.join(out_dir, "IJBC")
    meta = os.path.join(root, "meta")
    templates, images = _ijb_plan(seed, num_templates)
    tasks = [_task(common, NS_IJB, im["subject"], im["key"], layout=LOOSE, size=(150, 250), frame=im["frame"])
             for im in images]
    with _StagedDir(os.path.join(root, "loose_crop")) as stage, \
            atomic_open(os.path.join(meta, "ijbc_name_5pts_score.txt"), "w") as f5:
        for im, (jpg, lm, score, _) in zip(images, R.imap(tasks, "IJBC")):
            stage.write(im["name"], jpg)
            # InsightFace's IJB scripts: name, x1 y1 ... x5 y5 (reshape(5, 2)), faceness score last
            f5.write(im["name"] + " " + " ".join(f"{v:.3f}" for v in lm.ravel()) + f" {score:.3f}\n")
    with atomic_open(os.path.join(meta, "ijbc_face_tid_mid.txt"), "w") as f:
        for im in images:
            f.write(f"{im['name']} {im['tid']} {im['mid']}\n")
    # 1:1 pairs: every genuine template pair, impostor pairs up to 50x as many
    subj = {tid: s for tid, s in templates}
    tids = [tid for tid, _ in templates]
    pos, neg = [], []
    for i in range(len(tids)):
        for j in range(i + 1, len(tids)):
            (pos if subj[tids[i]] == subj[tids[j]] else neg).append((tids[i], tids[j]))
    cap = max(1000, 50 * len(pos))
    if len(neg) > cap:
        sel = np.sort(keyed_rng(seed, NS_IJB, 0x9E6).choice(len(neg), cap, replace=False))
        neg = [neg[k] for k in sel]
    pairs = sorted([(a, b, 1) for a, b in pos] + [(a, b, 0) for a, b in neg])
    with atomic_open(os.path.join(meta, "ijbc_template_pair_label.txt"), "w") as f:
        for a, b, lab in pairs:
            f.write(f"{a} {b} {lab}\n")
    # 1:N (InsightFace ijb_1n.py): gallery G1/G2 over disjoint subjects, one template each;
    # every other template is a mixed-media probe of a gallery subject
    first = {}
    for tid, s in templates:
        first.setdefault(s, tid)
    rows = {"G1": [], "G2": [], "probe": []}
    for im in images:
        s = im["subject"]
        if first[s] == im["tid"]:
            rows["G1" if s % 2 == 0 else "G2"].append(im)
        else:
            rows["probe"].append(im)
    for key, fname in (("G1", "ijbc_1N_gallery_G1.csv"), ("G2", "ijbc_1N_gallery_G2.csv"),
                       ("probe", "ijbc_1N_probe_mixed.csv")):
        with atomic_open(os.path.join(meta, fname), "w") as f:
            f.write("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
            for im in rows[key]:
                f.write(f"{im['tid']},{im['subject'] + 1},{im['name']}\n")
    return {"root": root, "images": len(images), "templates": len(templates),
            "subjects": len(set(s for _, s in templates)), "media": images[-1]["mid"] if images else 0,
            "pairs": len(pairs), "genuine_pairs": len(pos)}


def _write_megaface(out_dir, R, probes, probe_images, distractors, noise, **common):
    import json

    from shrinkteanet.core.utils import atomic_open

    seed = common["seed"]
    root = os.path.join(out_dir, "megaface")
    r = keyed_rng(seed, NS_MF_PROBE, 0x4015E)
    n_fs_noise = int(round(noise * probes * probe_images))
    n_mf_noise = int(round(noise * distractors))
    fs_noisy = set(int(v) for v in r.choice(probes * probe_images, n_fs_noise, replace=False)) if n_fs_noise else set()
    mf_noisy = set(int(v) for v in r.choice(distractors, n_mf_noise, replace=False)) if n_mf_noise else set()
    fs_paths, fs_ids, fs_noise_paths, tasks = [], [], [], []
    for p in range(probes):
        name = f"Person_{p:04d}"
        for k in range(probe_images):
            rel = f"{name}/{name}_{k + 1}.jpg"
            fs_paths.append(rel)
            fs_ids.append(name)
            flat = p * probe_images + k
            if flat in fs_noisy:
                # a mislabelled probe: someone else filed under this name, as FaceScrub's noise list records
                tasks.append(_task(common, NS_MF_PROBE, probes + flat, (k,)))
                fs_noise_paths.append(rel)
            else:
                tasks.append(_task(common, NS_MF_PROBE, p, (k,)))
    mf_paths, mf_noise_paths = [], []
    for d in range(distractors):
        rel = f"{d // 100:04d}/{d:07d}.jpg"
        mf_paths.append(rel)
        if d in mf_noisy:
            # a distractor that actually shows a probe identity (MegaFace's distractor noise)
            tasks.append(_task(common, NS_MF_PROBE, d % probes, (10000 + d,)))
            mf_noise_paths.append(rel)
        else:
            tasks.append(_task(common, NS_MF_DISTRACTOR, d, (0,)))
    dests = [(0, p) for p in fs_paths] + [(1, p) for p in mf_paths]
    with _StagedDir(os.path.join(root, "facescrub_images")) as fs_stage, \
            _StagedDir(os.path.join(root, "megaface_images")) as mf_stage:
        for (which, rel), (jpg, _, _, _) in zip(dests, R.imap(tasks, "megaface")):
            (mf_stage if which else fs_stage).write(rel, jpg)
    tl = os.path.join(root, "templatelists")
    with atomic_open(os.path.join(tl, "facescrub_features_list.json"), "w") as f:
        json.dump({"path": fs_paths, "id": fs_ids}, f)
    # devkit set 1 lists: nested random subsets of the distractors
    order = keyed_rng(seed, NS_MF_DISTRACTOR, 0x5E7).permutation(distractors)
    sizes = [s for s in MEGAFACE_SIZES if s <= distractors]
    for s in sizes:
        with atomic_open(os.path.join(tl, f"megaface_features_list.json_{s}_1"), "w") as f:
            json.dump({"path": [mf_paths[k] for k in sorted(order[:s])]}, f)
    for fname, lines in (("facescrub_noises.txt", fs_noise_paths), ("megaface_noises.txt", mf_noise_paths)):
        with atomic_open(os.path.join(root, fname), "w") as f:
            f.writelines(x + "\n" for x in lines)
    return {"root": root, "probe_identities": probes, "probe_images": len(fs_paths), "distractors": distractors,
            "sizes": sizes, "facescrub_noise": len(fs_noise_paths), "megaface_noise": len(mf_noise_paths)}


def format_summary(res):
    """Human summary of ``generate``'s result (printed by the CLI)."""
    t = res["train"]
    lines = [f"synthetic faces in {res['out_dir']} (seed {res['seed']}, difficulty {res['difficulty']:g}, "
             f"{res['image_size']}x{res['image_size']})",
             f"  train      {t['num_images']} images of {t['num_ids']} identities -> train.rec/.idx, property, train.lst"]
    for name, b in res["bins"].items():
        lines.append(f"  {name + '.bin':<12} {b['pairs']} pairs ({b['same']} same) over {b['identities']} identities")
    if "val" in res:
        v = res["val"]
        lines.append(f"  {'val.bin':<12} {v['pairs']} pairs ({v['same']} same) over {v['identities']} identities "
                     "(validation: for tuning, never a test set)")
    if "ijb" in res:
        j = res["ijb"]
        lines.append(f"  IJBC       {j['images']} loose crops, {j['templates']} templates of {j['subjects']} subjects, "
                     f"{j['media']} media, {j['pairs']} template pairs ({j['genuine_pairs']} genuine), 1:N G1/G2/probe")
    if "megaface" in res:
        m = res["megaface"]
        lines.append(f"  megaface   {m['probe_images']} probe images of {m['probe_identities']} identities, "
                     f"{m['distractors']} distractors, lists {','.join(map(str, m['sizes']))}, "
                     f"noise {m['facescrub_noise']}+{m['megaface_noise']}")
    lines.append(f"  rendered {res['num_rendered']} images in total")
    return "\n".join(lines)

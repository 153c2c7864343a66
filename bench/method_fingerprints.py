"""Behaviour fingerprints of every method variant (issue 25: refactors must not change a bit).

For fixed seeds: a tiny RecordIO set (``study.tiny.write_tiny_set``), a tiny r18 teacher
(``study.tiny.train_tiny_teacher``), then a few training steps through ``training.train.train`` of
each variant of the method registry (``<student>_<variant suffix>`` configs: the 11 of
none, stn, stn_final, l2, l2_final, kd, hint, margin, lowres_kt, lowres_kd, lowres_ktkd).
Recorded per variant: ``params_sha1`` (the summary's digest of the trainable parameters), the
SHA-1 of every trainable parameter by name, every loss part of every step (as ``float.hex``),
the final stage cosines, and the SHA-1 of each checkpoint file the run wrote (``.params``,
``.head.params``, ``.states``, ``-symbol.json``); and every named config (``RENAMED`` keys under
their new names).

Run: ``.venv/bin/python bench/method_fingerprints.py --write REF.json`` on the reference code,
then ``--check REF.json`` after each change (exit 1 and the differences when any value moved).
SHA-1s are those of this machine's MXNet/MKL build: compare runs on one machine only.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")

STEPS = 4
#: the variants whose knowledge transfer needs the teacher's own architecture for the student
TRANSFER_STUDENT = ("network=r18", "net_opts={'units':[1,1,1,1],'filters':[8,8,16,16,32]}")
CHECKPOINT_SUFFIXES = (".params", ".states", "-symbol.json")
#: config keys renamed since the reference (old -> new): a config is compared under the new names
RENAMED = {"distill_weight": "stn_weight", "verbose": "verify_every"}


def _sha1(data):
    return hashlib.sha1(data).hexdigest()


def _file_digests(prefix):
    folder = os.path.dirname(prefix)
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(CHECKPOINT_SUFFIXES):
            with open(os.path.join(folder, name), "rb") as f:
                out[name] = _sha1(f.read())
    return out


def _param_digests(method):
    import numpy as np

    params = method.trainable_params()
    return {name: _sha1(np.ascontiguousarray(p.data(p.list_ctx()[0]).asnumpy()).tobytes())
            for name, p in sorted(params.items())}


def run_variant(suffix, data, teacher, out):
    """The fingerprint of ``mfn_<suffix>`` after ``STEPS`` steps."""
    from shrinkteanet.study.tiny import train_overrides
    from shrinkteanet.training import config, train

    extra = [f"teacher={teacher}", "lowres_size=16", "lr_schedule=constant", f"max_batches={STEPS}",
             "frequent=1", "seed=7"]
    if suffix.startswith("lowres_kt"):
        extra += list(TRANSFER_STUDENT)
    cfg = config.config_by_name(f"mfn_{suffix}", train_overrides(data, f"{out}/model", *extra))
    steps, holder = [], {}

    def record(info):
        steps.append({k: float(v).hex() for k, v in info["losses"].items()})
        holder["method"] = info["method"]

    summary = train.train(cfg, callbacks=[record])
    return {"params_sha1": summary["params_sha1"], "params": _param_digests(holder["method"]), "losses": steps,
            "stage_cosines": {k: float(v).hex() for k, v in summary.get("stage_cosines", {}).items()},
            "files": _file_digests(f"{out}/model")}


def named_configs():
    """Every named config as ``shrinkteanet config NAME`` builds it (keys renamed to today's)."""
    from shrinkteanet.training import config

    out = {}
    for name in sorted(config.named_configs()):
        cfg = {RENAMED.get(k, k): v for k, v in dict(config.config_by_name(name)).items()}
        out[name] = json.loads(json.dumps(cfg, sort_keys=True, default=str))
    return out


def fingerprints(tmp):
    from shrinkteanet.methods.base import registry
    from shrinkteanet.study.tiny import train_tiny_teacher, write_tiny_set

    data = write_tiny_set(os.path.join(tmp, "data"))
    teacher = train_tiny_teacher(data, os.path.join(tmp, "teacher"))
    result = {"teacher_files": _file_digests(teacher.split(",")[0]), "configs": named_configs()}
    for _, variant in registry.variants():
        suffix = variant.config_suffix
        result[variant.name] = run_variant(suffix, data, teacher, os.path.join(tmp, suffix))
    return result


def _differences(ref, new, path=""):
    """``(changed, path: old -> new)`` of every value that differs; ``changed`` False for an
    addition (a method, config or config key the reference does not have)."""
    if isinstance(ref, dict) and isinstance(new, dict):
        for k in sorted(set(ref) | set(new)):
            if k not in ref:
                yield False, f"{path}/{k}: added"
            else:
                yield from _differences(ref[k], new.get(k), f"{path}/{k}")
    elif ref != new:
        yield True, f"{path}: {ref!r} -> {new!r}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="REF.json")
    group.add_argument("--check", metavar="REF.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = fingerprints(tmp)
    if args.write:
        with open(args.write, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
        print(f"{len(result) - 2} variants written to {args.write}")
        return 0
    with open(args.check) as f:
        ref = json.load(f)
    found = list(_differences(ref, result))
    diffs = [line for changed, line in found if changed]
    for line in diffs[:40]:
        print(line)
    added = len(found) - len(diffs)
    print(f"{len(ref) - 2} reference variants, {len(ref['configs'])} configs: "
          f"{'IDENTICAL' if not diffs else f'{len(diffs)} differences'} ({added} additions: new methods, configs, keys)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())

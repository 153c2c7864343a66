"""Which files of the package one training step runs through (issue 25: the path should get shorter).

Trains ``mfn_stn`` on the tiny set of ``study.tiny`` with a checkpoint every step and records, with
``sys.setprofile``, every package source file a Python function of which is called between the end of
step 1's callbacks and the end of step 2's: step 1's checkpoint, then step 2's seeding, forward,
backward, update, monitor and callbacks.  Prints the count and the files.

With ``--run``: every package file of the whole ``train.train`` call (config checks, networks, method,
loader, the loop, checkpoints, summary).

Run: ``.venv/bin/python bench/step_path.py [--run]`` (``PYTHONPATH=<a copy of another version>`` to measure
that version).
"""
import os
import sys
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main():
    import shrinkteanet
    import shrinkteanet.eval
    import shrinkteanet.symbols
    from shrinkteanet.study import tiny
    from shrinkteanet.training import config, train

    # the three source folders of the one namespace (setup.py package_dir)
    roots = tuple(os.path.dirname(m.__file__) + os.sep for m in (shrinkteanet, shrinkteanet.symbols, shrinkteanet.eval))
    base = os.path.dirname(os.path.dirname(shrinkteanet.__file__))
    seen = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(roots):
            seen.add(os.path.relpath(frame.f_code.co_filename, base))

    whole = "--run" in sys.argv[1:]

    def window(info):
        if info["step"] == 1 and not whole:
            sys.setprofile(profile)
        elif info["step"] == 2:
            sys.setprofile(None)

    with tempfile.TemporaryDirectory() as tmp:
        data = tiny.write_tiny_set(os.path.join(tmp, "data"), with_bin=False)
        teacher = tiny.train_tiny_teacher(data, os.path.join(tmp, "teacher"))
        overrides = tiny.train_overrides(data, os.path.join(tmp, "run", "model"), f"teacher={teacher}",
                                         "max_batches=3", "ckpt_every=1", "lr_schedule=constant")
        cfg = config.config_by_name("mfn_stn", overrides)
        if whole:
            sys.setprofile(profile)
        train.train(cfg, callbacks=[window])
    files = sorted(seen)
    print(f"{len(files)} package files in {'the whole train() call' if whole else 'one training step'}:")
    for f in files:
        print("  " + f)


if __name__ == "__main__":
    main()

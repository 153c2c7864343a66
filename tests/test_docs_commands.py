"""Every shell command shown in the guides (``docs/guides/*.md``, fenced ```` ```bash ```` blocks) runs here, in
the guide's order, on a tiny synthetic set, so the guides cannot drift from the command line.

The guides use variables that this collector binds once per session:

* ``$DATA``: a tiny synthetic set (``shrinkteanet data synth``, 32x32 faces) in every format: RecordIO
  training set, the three ``.bin`` sets, ``megaface/`` and ``IJBC/``; ``$MEGAFACE`` = ``$DATA/megaface``,
  ``$IJB`` = ``$DATA``;
* ``$TEACHER``: a tiny r90-family teacher trained on ``$DATA``; ``$MODEL``: a copy of it (exports write
  beside it);
* ``$PHOTOS``: two real photographs (``test-assets``, ``make test-assets``) in identity folders;
* ``$OUT``: an empty folder per guide.

Tiny equivalents substituted (what a command keeps is its command line, flags and file formats):

* ``--gpus X`` is dropped and ``GPUS=X`` becomes ``GPUS=`` (CPU);
* ``shrinkteanet train`` gets the demo's tiny network sizes and schedule for its network appended
  (``shrinkteanet demo --recipe-extra NET --scale tiny``; low-resolution methods at half the tiny input);
  a recipe (``bash recipes/X.sh``) gets them through ``EXTRA``;
* ``eval``, ``export``, ``embed`` and ``compare`` get ``--image-size 32``; ``make`` gets ``IMAGE_SIZE=32`` and
  runs without re-installing.

A command with the trailing comment ``# not tested: REASON`` (real data, GPUs, several machines, the
suite itself) is skipped with that reason, visibly.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
BIN = Path(sys.executable).parent
TINY_SIZE = 32
NOT_TESTED = re.compile(r"\s+#\s*not tested:\s*(.*)$")
FENCE = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
#: a guide may not lose its examples unnoticed
MIN_RUNNABLE = 33
PHOTOS = ["obama.jpg", "biden.jpg"]


def _commands(path):
    """(line number, command, reason-or-None) of every command in the guide's bash blocks."""
    text = path.read_text(encoding="utf-8")
    found = []
    for block in FENCE.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        pending, start = "", None
        for k, line in enumerate(block.group(1).splitlines()):
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            start = start if pending else first + k
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            cmd, pending = pending + line, ""
            m = NOT_TESTED.search(cmd)
            found.append((start, cmd[:m.start()] if m else cmd, m.group(1) if m else None))
    return found


CASES = [(g, n, cmd, reason) for g in GUIDES for n, cmd, reason in _commands(g)]
RUNNABLE = [c for c in CASES if c[3] is None]
RAN = []


def _cli(*args, env, timeout=300):
    r = subprocess.run([str(BIN / "shrinkteanet"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def _base_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1", SHRINKTEANET=str(BIN / "shrinkteanet"))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    for key in ("EXTRA", "VAL", "GPUS", "TEACHER", "STUDENT", "LOWRES"):
        env.pop(key, None)
    return env


def _latest_epoch(prefix):
    nums = sorted(int(p.name[len(prefix.name) + 1:-len(".params")])
                  for p in prefix.parent.glob(prefix.name + "-[0-9][0-9][0-9][0-9].params"))
    return nums[-1]


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The tiny set, teacher, model and photos every guide's commands are bound to."""
    base = tmp_path_factory.mktemp("docs_world")
    env = _base_env()
    data = base / "synth"
    _cli("data", "synth", str(data), "--identities", "12", "--images-per-id", "6", "--test-identities", "12",
         "--pairs", "40", "--ijb-templates", "8", "--megaface-probes", "3", "--megaface-probe-images", "2",
         "--megaface-distractors", "10", "--image-size", str(TINY_SIZE), env=env)
    teacher = base / "teacher"
    _cli("train", "--config", "teacher_r90", "--data", str(data), "--out", str(teacher),
         *_tiny_overrides("r90", False, env), env=env)
    epoch = _latest_epoch(teacher / "model")
    model = base / "model"
    model.mkdir()
    for f in teacher.glob("model-*"):
        shutil.copy(f, model / f.name)
    photos = base / "photos"
    source = ROOT / "test-assets" / "face_recognition"
    if all((source / p).is_file() for p in PHOTOS):
        for k, p in enumerate(PHOTOS):
            (photos / f"person{k}").mkdir(parents=True)
            shutil.copy(source / p, photos / f"person{k}" / p)
    env.update(DATA=str(data), MEGAFACE=str(data / "megaface"), IJB=str(data), TEACHER=f"{teacher}/model,{epoch}",
               MODEL=f"{model}/model,{epoch}", PHOTOS=str(photos), IMAGE_SIZE=str(TINY_SIZE))
    return {"env": env, "base": base, "photos": photos.is_dir()}


_EXTRAS = {}


def _tiny_overrides(network, lowres, env):
    """``shrinkteanet demo --recipe-extra NET --scale tiny`` (cached), plus the low-resolution input."""
    key = "lowres" if lowres and network.startswith("r") else network
    if key not in _EXTRAS:
        out = _cli("demo", "--recipe-extra", key, "--scale", "tiny", env=env)
        _EXTRAS[key] = out.split()
    extra = list(_EXTRAS[key])
    if lowres and not any(x.startswith("lowres_size=") for x in extra):
        extra.append(f"lowres_size={TINY_SIZE // 2}")
    return extra


def _preset_network(config_name):
    if config_name.startswith("teacher_"):
        return config_name[len("teacher_"):]
    return config_name.split("_")[0]


def _train_network(words):
    config_name = words[words.index("--config") + 1]
    nets = [w.split("=", 1)[1] for w in words if w.startswith("network=")]
    return (nets[-1] if nets else _preset_network(config_name)), "lowres" in config_name


def _drop_gpus(words):
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w == "--gpus":
            skip = True
        elif not w.startswith("--fp16"):
            out.append(w)
    return out


def _tiny(words, env):
    """The tiny equivalent of one command (see the module docstring)."""
    words = [("GPUS=" if w.startswith("GPUS=") else w) for w in _drop_gpus(words)]
    if "shrinkteanet" in words:
        at = len(words) - 1 - words[::-1].index("shrinkteanet")  # the last: `launch ... -- shrinkteanet train`
        sub = words[at + 1] if at + 1 < len(words) else ""
        if sub == "train":
            words = words + _tiny_overrides(*_train_network(words), env)
        elif sub in ("eval", "export", "embed", "compare") and "--image-size" not in words:
            words = words + ["--image-size", str(TINY_SIZE)]
    if "bash" in words:
        script = Path(words[words.index("bash") + 1]).stem
        network = "lowres" if script.startswith("lowres") else script.split("_")[-1 if script.startswith("teacher") else 0]
        words = [f"EXTRA={' '.join(_tiny_overrides(network, False, env))}"] + words
    if words and words[0] == "make":
        words = ["make", "-o", "install", "-o", f"{BIN.parent}/.installed-cpu", f"VENV={BIN.parent}"] + words[1:]
    return words


def _run(cmd, env, out):
    env = dict(env, OUT=str(out))
    expanded = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), cmd)
    words = _tiny(shlex.split(expanded, comments=True), env)
    while words and re.match(r"^[A-Z_]+=", words[0]):  # leading VAR=value words: the command's environment
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return subprocess.run(words, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300), words


@pytest.mark.parametrize("guide,line,cmd,reason", CASES,
                         ids=[f"{g.stem}:{n}" for g, n, _, _ in CASES])
def test_guide_command_runs(guide, line, cmd, reason, world):
    if reason is not None:
        pytest.skip(f"{guide.name}:{line} not tested: {reason}")
    if ("$PHOTOS" in cmd or "aligned.lst" in cmd) and not world["photos"]:
        pytest.skip("the real photos are missing: make test-assets")
    out = world["base"] / "out" / guide.stem
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    r, words = _run(cmd, world["env"], out)
    assert r.returncode == 0, f"{guide.name}:{line}: {' '.join(words)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    RAN.append((guide.stem, line, time.time() - t0))


def test_the_guides_show_runnable_commands():
    assert len(RUNNABLE) >= MIN_RUNNABLE, [f"{g.name}:{n}" for g, n, _, _ in RUNNABLE]
    for guide in ("install", "data", "training", "evaluation", "deploy", "troubleshooting", "reproduce"):
        assert any(g.stem == guide for g, _, _, _ in RUNNABLE), guide


def test_every_runnable_command_ran(request):
    """Last in the file: when the whole file runs, every command not marked ``not tested`` was executed."""
    selected = [i for i in request.session.items if i.originalname == "test_guide_command_runs"]
    if len(selected) != len(CASES):
        pytest.skip("only part of the guide commands was selected")
    assert len(RAN) == len(RUNNABLE), sorted(set((g.stem, n) for g, n, _, _ in RUNNABLE) - {(g, n) for g, n, _ in RAN})


def test_collector_reads_continuations_and_markers(tmp_path):
    guide = tmp_path / "g.md"
    guide.write_text("text\n\n```bash\n# a comment\nshrinkteanet info\nshrinkteanet data info \\\n  $DATA\n"
                     "make demo   # not tested: too slow\n```\n\n```text\nnot a command\n```\n", encoding="utf-8")
    assert _commands(guide) == [(5, "shrinkteanet info", None), (6, "shrinkteanet data info    $DATA", None),
                                (8, "make demo", "too slow")]


def test_tiny_substitution_keeps_the_command_line(world):
    env = world["env"]
    words = _tiny(["shrinkteanet", "train", "--config", "mfn_lowres_kd", "--gpus", "0,1", "--out", "o", "lowres_size=56"], env)
    assert words[:6] == ["shrinkteanet", "train", "--config", "mfn_lowres_kd", "--out", "o"]
    assert words[-1] == f"lowres_size={TINY_SIZE // 2}" and "image_size=32" in words  # tiny values come last: they win
    assert _tiny(["GPUS=0,1", "bash", "recipes/mfnr_stn.sh"], env)[1:] == ["GPUS=", "bash", "recipes/mfnr_stn.sh"]

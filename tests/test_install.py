"""`pip install .` (non-editable) gives a working package with all three namespaces.

The fresh venv borrows the heavy dependencies (mxnet, numpy, ...) from the
running interpreter's site-packages through a path line, so only our own
package is installed, from a wheel built out of the source tree."""
import os
import pathlib
import site
import subprocess
import sys
import venv

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_non_editable_install_imports_every_namespace(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      text=True).strip()
    # a path line (not a site dir): the dev venv's editable finder .pth is not processed
    (pathlib.Path(purelib) / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    build = tmp_path / "src"
    subprocess.check_call(["git", "-C", str(ROOT), "ls-files", "-z"], stdout=open(tmp_path / "files", "wb"))
    for rel in (tmp_path / "files").read_bytes().decode().split("\0"):
        if rel and (ROOT / rel).is_file():
            dst = build / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes((ROOT / rel).read_bytes())
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.check_call([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           str(build)], env=env, cwd=tmp_path)
    code = ("import shrinkteanet, shrinkteanet.symbols, shrinkteanet.eval, shrinkteanet.data, shrinkteanet.cli;"
            "print(shrinkteanet.__file__); print(shrinkteanet.symbols.__file__); print(shrinkteanet.eval.__file__)")
    out = subprocess.check_output([str(py), "-c", code], text=True, cwd=tmp_path).split()
    assert all(p.startswith(purelib) for p in out), out
    r = subprocess.run([str(env_dir / "bin" / "shrinkteanet"), "info"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "1.9.1" in r.stdout, r.stderr

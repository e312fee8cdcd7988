"""The repository as the Python package ``youtube-8m``, as cloud training jobs run it.

Every script must import as ``youtube-8m.<script>`` (what ``python -m`` does
first), and train.py and a tool must run that way, from an installed source
distribution (what Vertex AI's ``--python-package-uris`` installs; built and
installed here without network) and from a folder holding the repository
under the name ``youtube-8m``.  The cloud job configs must name
modules, images, the package file and flags that exist.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

import app_flags
from helpers import REPO

PACKAGE = "youtube-8m"
# The folders .gitignore keeps out of the repository (outputs, caches).
NOT_SOURCES = ("build", "dist", "*.egg-info", "__pycache__", ".git", ".*cache", ".venv", "runs",
               "sample_data", "demo")


def _scripts():
    """Root modules with a ``__main__`` block: the scripts users run."""
    scripts = []
    for path in sorted(glob.glob(os.path.join(REPO, "*.py"))):
        with open(path) as f:
            if 'if __name__ == "__main__":' in f.read() and not path.endswith("setup.py"):
                scripts.append(os.path.basename(path)[:-3])
    return scripts


SCRIPTS = _scripts()


def _docstring_first_line(script):
    with open(os.path.join(REPO, script + ".py")) as f:
        return re.search(r'"""(.+)', f.read()).group(1).strip()


def _run_python(args, cwd, pythonpath=None):
    """``python ARGS`` in ``cwd`` with only ``pythonpath`` (not the repo) importable."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _check_help(script, result):
    """absl's usage: the script's own docstring and its flags, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert _docstring_first_line(script) in result.stdout, script
    assert re.search(r"^  --\w+", result.stdout, re.MULTILINE), script


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """The source distribution, built from a copy of the sources (the repo stays clean)."""
    root = tmp_path_factory.mktemp("sdist")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    # The README's build command (python -m build --sdist), into a folder of the test's.
    result = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir",
                             str(root / "dist")], cwd=source, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (tarball,) = glob.glob(str(root / "dist" / "*.tar.gz"))
    return tarball


def test_every_mention_names_the_file_the_build_writes(sdist):
    """README, setup.py and the job configs name the file `python -m build --sdist` wrote."""
    name = os.path.basename(sdist)
    for doc in ("README.md", "cloudml-gpu.yaml", "cloudml-distributed.yaml", "setup.py"):
        with open(os.path.join(REPO, doc)) as f:
            text = f.read()
        mentioned = set(re.findall(r"yt8m[-_]toolkit-[\w.*]*\.tar\.gz", text))
        assert mentioned and mentioned <= {name}, (doc, mentioned, name)
    with open(os.path.join(REPO, "README.md")) as f:
        assert "python -m build --sdist" in f.read()


@pytest.fixture(scope="module")
def installed(sdist, tmp_path_factory):
    """The sdist pip-installed into a folder of its own (no network, no dependencies)."""
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), sdist],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return str(target)


def test_sdist_holds_the_sources(sdist):
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"setup.py", "cluster.py", "__init__.py"} | {s + ".py" for s in SCRIPTS} <= names


def _import_all(cwd, pythonpath=None):
    """Imports every script as ``youtube-8m.<script>`` in one process (runpy's first step)."""
    imports = "; ".join(f"importlib.import_module('{PACKAGE}.{s}')" for s in SCRIPTS)
    result = _run_python(["-c", f"import importlib; {imports}"], cwd, pythonpath)
    assert result.returncode == 0, result.stderr[-3000:]


def test_installed_package_runs_every_script(installed, tmp_path):
    package = os.path.join(installed, PACKAGE)
    for script in SCRIPTS + ["__init__", "cluster"]:
        assert os.path.exists(os.path.join(package, script + ".py")), script
    # The build script and the tests are not part of the package.
    assert not os.path.exists(os.path.join(package, "setup.py"))
    assert not os.path.exists(os.path.join(package, "tests"))
    _import_all(str(tmp_path), installed)
    result = _run_python(["-m", f"{PACKAGE}.train", "--helpfull"], str(tmp_path), installed)
    _check_help("train", result)
    assert "--num_gpu" in result.stdout and "cpu_towers" in result.stdout
    # A tool with flags of its own.
    _check_help("avg_checkpoints", _run_python(
        ["-m", f"{PACKAGE}.avg_checkpoints", "--help"], str(tmp_path), installed))


def test_scripts_run_from_the_parent_folder(tmp_path):
    """What `gcloud ... --package-path=youtube-8m --module-name=youtube-8m.train` runs."""
    os.symlink(REPO, tmp_path / PACKAGE)
    _import_all(str(tmp_path))
    # eval.py runs, and a typo flag is still the one-line error of the flat scripts.
    result = _run_python(["-m", f"{PACKAGE}.eval", "--max_step=10"], str(tmp_path))
    assert result.returncode != 0 and "max_step" in result.stderr
    assert "Traceback" not in result.stderr


def _config_values(text, key):
    return re.findall(rf"^\s*-?\s*{key}:\s*(\S+)", text, re.MULTILINE)


@pytest.mark.parametrize("config", ["cloudml-gpu.yaml", "cloudml-distributed.yaml"])
def test_cloud_job_configs(config):
    with open(os.path.join(REPO, config)) as f:
        text = f.read()
    modules = _config_values(text, "pythonModule")
    assert modules and all(m.startswith(PACKAGE + ".") and m.split(".", 1)[1] in SCRIPTS
                           for m in modules)
    for image in _config_values(text, "executorImageUri"):
        assert re.fullmatch(r"us-docker\.pkg\.dev/vertex-ai/training/tf-(gpu|cpu)\.2-\d+"
                            r"\.py3\d+:latest", image), image
    with open(os.path.join(REPO, "setup.py")) as f:
        version = re.search(r'version="([^"]+)"', f.read()).group(1)
    packages = re.findall(r"^\s*- (gs://\S+\.tar\.gz)", text, re.MULTILINE)
    assert packages and all(p.endswith(f"/yt8m_toolkit-{version}.tar.gz") for p in packages)
    # Every flag of the job is one train.py reads.
    flags = re.findall(r"^\s*- --(\w+)", text, re.MULTILINE)
    assert flags
    for flag in flags:
        assert app_flags.TRAIN in app_flags._USERS.get(flag, ()), flag

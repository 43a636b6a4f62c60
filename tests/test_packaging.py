"""The wheel a user installs: one ``freshindex`` namespace, the configs inside it, and the
CLI working from a folder outside the repository.

The wheel is built from this checkout and installed into a new virtual environment. That
environment sees the locked third-party packages of the project's venv (a ``.pth`` line
adds its site-packages; the ``.pth`` files there, among them the editable install of
freshindex, are not run from such a line), so freshindex itself comes only from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_corpus

pytestmark = pytest.mark.slow
_NOT_SOURCES = (".git", ".venv", "data", "build", "dist", ".bench", "*.egg-info", "__pycache__")


def _run(cmd, *, cwd, env=None, timeout=600):
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, freshindex script, a clean environment) of a venv holding only the wheel."""
    work = tmp_path_factory.mktemp("wheel")
    # nothing of this checkout may leak in: no PYTHONPATH (pip and the CLI would see it)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "VIRTUAL_ENV", "FRESHINDEX_"))
    }
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_SOURCES))
    pip = [sys.executable, "-m", "pip"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", str(source)],
        cwd=work,
        env=env,
    )
    (wheel,) = (work / "dist").glob("freshindex-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work, env=env)
    python = venv / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=work,
        env=env,
    ).stdout.strip()
    (Path(purelib) / "locked-deps.pth").write_text(site.getsitepackages()[0] + "\n")
    _run(
        [*pip, "--python", str(python), "install", "--no-deps", "-q", str(wheel)], cwd=work, env=env
    )
    env["PATH"] = f"{venv / 'bin'}:{sysconfig.get_paths()['scripts']}:{env.get('PATH', '')}"
    return python, venv / "bin" / "freshindex", env, work


def test_the_wheel_installs_one_namespace_with_its_configs(installed):
    python, _, env, work = installed
    probe = (
        "import importlib.util, json, freshindex, freshindex.config as c, "
        "freshindex.query.api, freshindex.pipelines.batch;"
        "print(json.dumps({'pkg': freshindex.__file__, 'default': str(c.DEFAULT_CONFIG),"
        "'exists': c.DEFAULT_CONFIG.is_file(), 'prompts': "
        "sorted(p.name for p in (c.CONFIGS_DIR / 'prompts').iterdir()),"
        "'top_level': [n for n in ('schemas', 'transforms', 'pipelines', 'query', 'configs')"
        " if importlib.util.find_spec(n)]}))"
    )
    out = json.loads(_run([str(python), "-c", probe], cwd=work, env=env).stdout)
    assert "site-packages" in out["pkg"] and str(ROOT) not in out["pkg"]
    assert out["exists"] and "site-packages" in out["default"]
    assert {"answer.txt", "agent.txt"} <= set(out["prompts"])
    assert out["top_level"] == []  # nothing that collides with another project's packages


def test_ingest_and_search_from_a_folder_outside_the_repository(installed, tmp_path):
    _, freshindex, env, _ = installed
    corpus = write_corpus(tmp_path / "corpus")
    config = tmp_path / "fake.yaml"
    config.write_text(
        "embedding:\n  model: fake-hash\nchunking:\n  max_tokens: 48\n  overlap_tokens: 8\n"
    )
    common = ["--db", str(tmp_path / "db"), "--table", "docs", "--config", str(config)]
    ingest = _run([str(freshindex), "ingest", str(corpus), *common], cwd=tmp_path, env=env)
    assert "succeeded" in ingest.stdout
    search = _run(
        [str(freshindex), "search", "how do I authenticate?", *common, "--mode", "fts", "--json"],
        cwd=tmp_path,
        env=env,
    )
    hits = json.loads(search.stdout)["hits"]
    assert hits and hits[0]["doc_id"] == "guide/auth.md"


def test_the_wheel_carries_the_console_templates_and_stylesheet(installed):
    python, _, env, work = installed
    probe = (
        "import json, freshindex.query.console as c;"
        "print(json.dumps({'here': str(c.HERE), 'templates': sorted(p.name for p in "
        "(c.HERE / 'templates').glob('*.html')), 'css': (c.HERE / 'static' / "
        "'console.css').is_file(), 'rendered': len(c._env.get_template('diff.html')"
        ".render(page='diff', diff=None, from_ref='', to_ref=''))}))"
    )
    out = json.loads(_run([str(python), "-c", probe], cwd=work, env=env).stdout)
    assert "site-packages" in out["here"] and out["css"] and out["rendered"] > 200
    assert {"base.html", "overview.html", "search.html", "diff.html"} <= set(out["templates"])

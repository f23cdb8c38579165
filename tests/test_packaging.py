"""A library people can install and run: the wheel's contents, the artifact resolver, the CLI's
front door (--version, the command list, one line for a missing optional package, --overwrite),
and an install into a fresh virtual environment used from outside any checkout."""

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import fiancee
from fiancee.cli import build_parser, main
from fiancee.tasks.base import WEIGHTS_ENV, find_weights, weights_dir

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fiancee"


def _shipped_files() -> list[str]:
    """Every artifact file in the package's weights/ and configs/ folders, as wheel paths."""
    files = []
    for folder in ("weights", "configs"):
        for p in sorted((PACKAGE / folder).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                files.append("fiancee/" + p.relative_to(PACKAGE).as_posix())
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources so the checkout gets no build/ or egg-info."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src_copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = (tmp / "dist").glob("fiancee-*.whl")
    return built


def test_the_wheel_holds_code_artifacts_licence_and_types(wheel):
    assert wheel.name.startswith(f"fiancee-{fiancee.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = _shipped_files()
    # Whatever the artifact folders hold today (the faces exits may be retrained), not a fixed list.
    assert any(n.startswith("fiancee/weights/faces/exits/") and n.endswith(".safetensors") for n in shipped)
    assert "fiancee/weights/fashion/backbone.safetensors" in shipped
    assert "fiancee/configs/fashion_backbone.json" in shipped
    missing = [n for n in shipped if n not in names]
    assert not missing, f"artifacts left out of the wheel: {missing}"
    assert "fiancee/py.typed" in names and "fiancee/cli/__init__.py" in names and "fiancee/tasks/base.py" in names
    licence = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert licence and b"MIT License" in zipfile.ZipFile(wheel).read(licence[0])
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Version: {fiancee.__version__}" in meta
    for extra in ("bank", "plots", "all"):
        assert f"Provides-Extra: {extra}" in meta
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "fiancee = fiancee.cli:main" in entry


def test_artifacts_resolve_inside_the_package_or_from_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert weights_dir("fashion") == PACKAGE / "weights" / "fashion"
    assert (find_weights("fashion") / "backbone.safetensors").is_file()
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    assert weights_dir("faces", "exits") == tmp_path / "faces" / "exits"
    with pytest.raises(FileNotFoundError, match=f"no trained artifact 'fashion' at .*{WEIGHTS_ENV}"):
        find_weights("fashion")


def test_cli_without_the_weights_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "empty"))
    assert main(["sample", "--task", "fashion", "--out", str(tmp_path / "s"), "--n", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and WEIGHTS_ENV in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_version_and_the_list_of_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"fiancee {fiancee.__version__}"
    assert main([]) == 0
    out = capsys.readouterr().out
    commands = sorted(build_parser()._subparsers._group_actions[0].choices)
    assert len(commands) >= 15
    for name in commands:
        assert name in out, name


def test_a_missing_optional_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    # None in sys.modules makes `import matplotlib` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["evaluate", str(tmp_path / "no_pipeline"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fiancee[plots]" in err and "matplotlib" in err
    assert not (tmp_path / "r").exists()  # refused before any work
    # The demo too, before it trains a predictor into a folder it would then leave half written.
    assert main(["demo", "--task", "fashion", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fiancee[plots]" in err
    assert not (tmp_path / "d").exists()
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert main(["build-bank", "--task", "faces", "--out", str(tmp_path / "bank"), "--n", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fiancee[bank]" in err


def test_an_import_error_elsewhere_is_one_line_too(monkeypatch, capsys):
    import fiancee.cli as cli

    def boom(args):
        import fiancee_not_a_module  # noqa: F401

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), "macs", boom))
    assert cli.main(["macs", "--backbone", "oasis"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fiancee macs: error: No module named 'fiancee_not_a_module'") and len(err.splitlines()) == 1


def _with_func(parser, command, func):
    parser._subparsers._group_actions[0].choices[command].set_defaults(func=func)
    return parser


def test_a_folder_writing_command_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "samples"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["sample", "--task", "faces", "--out", str(out), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # nothing written
    assert main(["sample", "--task", "faces", "--out", str(out), "--n", "2", "--overwrite"]) == 0
    assert (out / "grid.png").is_file() and (out / "keep.txt").read_text() == "mine"
    # The classifier too: its worked example must not replace the shipped one.
    assert main(["train-classifier", "--task", "fashion", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_every_folder_writing_command_has_overwrite():
    subs = build_parser()._subparsers._group_actions[0].choices
    refusing = [name for name, p in subs.items() if p.get_default("refuse_existing_out")]  # cli._args.out_option
    assert len(refusing) == 11, refusing
    for command in [*refusing, "build-bank"]:
        assert "--overwrite" in subs[command].format_help(), command


def _parent_site_dirs() -> list[str]:
    """The package folders of the interpreter running the tests, whichever environment that is (the
    README's venv, a system Python, a user site): where torch and the other dependencies are."""
    import site
    import sysconfig

    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_runs_outside_the_checkout(wheel, tmp_path):
    """The acceptance check: pip install the wheel (its dependencies from the environment running the
    tests), then from a folder outside any checkout the packaged artifacts are found (no training, no
    checkout paths)."""
    env_dir = tmp_path / "venv"
    # Not system_site_packages: inside a venv (the README's set-up) that is the bare base Python, without
    # torch. A .pth file lists the running environment's package folders instead. Its lines only extend
    # sys.path: the .pth files in those folders are not read, so an editable install of fiancee there
    # (its path to the checkout's src/) stays invisible and fiancee can only come from the wheel.
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", WEIGHTS_ENV)}
    env["OMP_NUM_THREADS"] = "1"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.strip()
    parent = _parent_site_dirs()
    assert parent and not any(Path(d).resolve() == Path(purelib).resolve() for d in parent)
    (Path(purelib) / "_fiancee_test_parent_env.pth").write_text("".join(d + "\n" for d in parent))
    # The parent's pip, run by the venv's interpreter, installs into the venv's site-packages.
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    cli = env_dir / "bin" / "fiancee"

    def run(*args):
        return subprocess.run([str(cli), *args], cwd=work, capture_output=True, text=True, env=env, timeout=600)

    where = subprocess.run(
        [
            str(py),
            "-c",
            "import fiancee, fiancee.tasks.base as b; print(fiancee.__file__); print(b.find_weights('faces', 'exits'))",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    module, exits = where.stdout.split()
    assert str(env_dir) in module and str(env_dir) in exits and str(ROOT) not in where.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"fiancee {fiancee.__version__}"
    sample = run("sample", "--task", "fashion", "--out", "s", "--n", "4")
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert len(list((work / "s").glob("sample_*.png"))) == 4


def test_a_huge_third_party_message_is_cut_to_one_readable_line():
    from fiancee.cli import _one_line

    text = _one_line(RuntimeError("Cannot insert a Tensor " + "0.01 * -3.3 " * 5000))
    assert len(text) <= 600 and text.startswith("Cannot insert a Tensor") and "characters)" in text

"""The house rules of DESIGN.md, checked on the source: import direction and library hygiene."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "stainldm"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _violations(files, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in files:
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.name} imports {name}")
    return bad


def test_library_never_imports_pipelines():
    assert _violations(LIB.rglob("*.py"), ("pipelines",)) == []


def test_models_and_diffusion_never_import_wsi():
    files = [*LIB.joinpath("models").rglob("*.py"), *LIB.joinpath("diffusion").rglob("*.py")]
    assert _violations(files, ("stainldm.wsi",)) == []


def test_wsi_sits_below_models_data_and_inference():
    higher = tuple(f"stainldm.{m}" for m in ("data", "models", "diffusion", "inference", "train", "eval"))
    assert _violations(LIB.joinpath("wsi").rglob("*.py"), higher) == []


def test_only_tracking_imports_wandb_and_library_does_not_print():
    wandb_users = [p for p in LIB.rglob("*.py") if "wandb" in _imports(p)]
    assert all(p.name == "tracking.py" for p in wandb_users), wandb_users
    printing = [
        f"{p.relative_to(ROOT)}:{n.lineno}"
        for p in LIB.rglob("*.py")
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
    ]
    assert printing == []


def test_the_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from pipelines.cli import main\nimport stainldm.wsi.reader\n")
    assert len(_violations([bad], ("pipelines", "stainldm.wsi"))) == 2


PIPELINES = ROOT / "pipelines"
LIBRARY_MAX_LINES = 550
RECIPE_MAX_LINES = 200


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_library_files_stay_small_and_pipelines_are_recipes():
    big = [f"{p.relative_to(ROOT)} ({_lines(p)} lines)" for p in LIB.rglob("*.py") if _lines(p) > LIBRARY_MAX_LINES]
    assert big == [], f"over {LIBRARY_MAX_LINES} lines: split along its ideas"
    long = [f"{p.name} ({_lines(p)} lines)" for p in PIPELINES.glob("*.py") if _lines(p) > RECIPE_MAX_LINES]
    assert long == [], f"a recipe is at most {RECIPE_MAX_LINES} lines: move logic into stainldm/"


def test_no_pipeline_imports_another_and_none_calls_the_cli():
    bad = []
    for path in PIPELINES.glob("*.py"):
        if path.name == "cli.py":  # the console script wires every pipeline's parser
            continue
        bad += [f"{path.name} imports {name}" for name in _imports(path) if name.startswith("pipelines")]
        bad += [f"{path.name}:{n.lineno} imports from pipelines" for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.ImportFrom) and n.module is None and n.level == 0]
    assert bad == []


def test_errors_keep_their_cause():
    """``raise ... from None`` hides the cause that ``--debug`` should show; ``from exc`` keeps it."""
    hidden = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in [*LIB.rglob("*.py"), *PIPELINES.glob("*.py")]
              for n in ast.walk(ast.parse(p.read_text()))
              if isinstance(n, ast.Raise) and isinstance(n.cause, ast.Constant) and n.cause.value is None]
    assert hidden == []


def test_library_messages_name_parameters_not_flags():
    """A library message names a parameter in backticks; the CLI turns it into the flag (errors.with_flags)."""
    flagged = []
    for p in LIB.rglob("*.py"):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call):
                text = " ".join(c.value for a in n.exc.args for c in ast.walk(a)
                                if isinstance(c, ast.Constant) and isinstance(c.value, str))
                if " --" in f" {text}" and "torchrun" not in text and "srun" not in text:
                    flagged.append(f"{p.relative_to(ROOT)}:{n.lineno}: {text[:60]}")
    assert flagged == []

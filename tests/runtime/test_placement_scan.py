"""A static scan for the bug class of issue 27: a tensor created without a device in the code that meets a
run's GPU tensors (training, evaluation, checkpoint). Each factory call there names its device, or carries a
``# host`` comment saying why the host is where it belongs; the device-strict runs check the rest at run time."""

import ast

from conftest import REPO

FACTORIES = {
    "zeros",
    "ones",
    "empty",
    "full",
    "tensor",
    "arange",
    "rand",
    "randn",
    "randint",
    "linspace",
    "eye",
    "as_tensor",
}
SCANNED = ("training", "evaluation", "checkpoint")


def factory_calls_without_device(source: str):
    """``(line, call)`` of each ``torch.<factory>(...)`` without ``device=`` and without a ``# host`` comment."""
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        func = node.func
        if not (func.attr in FACTORIES and isinstance(func.value, ast.Name) and func.value.id == "torch"):
            continue
        if any(k.arg == "device" for k in node.keywords):
            continue
        if any("# host" in lines[n - 1] for n in range(node.lineno, node.end_lineno + 1)):
            continue
        yield node.lineno, ast.get_source_segment(source, node)


def test_scan_finds_the_issue_27_accumulator():
    """The scan would have caught the loss-report accumulator of training/step.py."""
    before = "def reduce(reports):\n    total = torch.zeros(2, dtype=torch.float64)\n    return total\n"
    assert [line for line, _ in factory_calls_without_device(before)] == [2]
    after = before.replace("torch.float64)", "torch.float64, device=runtime.device)")
    assert list(factory_calls_without_device(after)) == []
    assert list(factory_calls_without_device(before.replace("\n    return", "  # host: kept here\n    return"))) == []


def test_no_unplaced_tensor_factories_in_training_evaluation_checkpoint():
    found = []
    for folder in SCANNED:
        for path in sorted((REPO / "megatron_plm" / folder).rglob("*.py")):
            for line, call in factory_calls_without_device(path.read_text()):
                found.append(f"{path.relative_to(REPO)}:{line}: {call}")
    assert not found, "tensors created without a device (add device=..., or '# host: why'):\n" + "\n".join(found)


def test_scanned_folders_exist():
    """A renamed folder must not leave the scan looking at nothing."""
    assert all(list((REPO / "megatron_plm" / folder).rglob("*.py")) for folder in SCANNED)

"""The table printed to the terminal, and docs/benchmarks.md with its plots."""

import platform
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .common import Result, format_number, spread

HEADER = (
    "| what | size | median | spread (min-max) | floor median | ratio | target | met |"
)
RULE = "| --- | --- | --- | --- | --- | --- | --- | --- |"


def table_rows(results: list[Result]) -> list[str]:
    """Return the results as Markdown table rows."""
    rows = [HEADER, RULE]
    for result in results:
        floor = (
            f"{format_number(sorted(result.floor)[len(result.floor) // 2])} "
            f"{result.unit}"
            if result.floor
            else "none"
        )
        ratio = f"{result.ratio:.2f}x" if result.ratio is not None else "-"
        rows.append(
            f"| {result.name} | {result.size} | {format_number(result.median)} "
            f"{result.unit} | {spread(result.values)} | {floor} | {ratio} | "
            f"{result.target_text()} | {'yes' if result.met else '**no**'} |"
        )
    return rows


def machine_facts() -> list[str]:
    """Return the CPU model, core count, memory, Python and Docker versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    models = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.splitlines()
        if line.startswith("model name")
    ]
    meminfo = Path("/proc/meminfo").read_text().splitlines()[0].split()
    docker = subprocess.run(
        [
            "docker",
            "version",
            "--format",
            "{{.Server.Version}} (API {{.Server.APIVersion}})",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return [
        f"- CPU: {models[0] if models else 'unknown'}, {len(models)} cores",
        f"- memory: {int(meminfo[1]) // 1024:,} MiB",
        f"- kernel: {platform.release()}, Python {platform.python_version()}",
        f"- Docker server: {docker or 'unknown'}",
    ]


def plot(results: list[Result], path: Path) -> None:
    """Plot each result's repetitions beside its floor's, normalised to the floor."""
    with_floor = [r for r in results if r.floor]
    figure, axis = plt.subplots(figsize=(7, 0.6 + 0.55 * len(with_floor)), dpi=80)
    for index, result in enumerate(with_floor):
        floor = sorted(result.floor)[len(result.floor) // 2]
        ratios = [value / floor for value in result.values]
        axis.scatter(ratios, [index] * len(ratios), color="tab:blue", s=18)
        target_colour = "tab:green" if result.met else "tab:red"
        axis.plot([result.target] * 2, [index - 0.3, index + 0.3], color=target_colour)
    axis.axvline(1.0, color="grey", linestyle=":")
    axis.set_yticks(range(len(with_floor)), [r.name for r in with_floor], fontsize=8)
    axis.set_xlabel("each repetition / floor median (bar: target)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_absolute(results: list[Result], path: Path) -> None:
    """Plot the results without a floor against their absolute targets."""
    plain = [r for r in results if not r.floor]
    figure, axes = plt.subplots(1, len(plain), figsize=(2.4 * len(plain), 2.6), dpi=80)
    for axis, result in zip(axes if len(plain) > 1 else [axes], plain, strict=True):
        axis.scatter([0] * len(result.values), result.values, color="tab:blue", s=18)
        colour = "tab:green" if result.met else "tab:red"
        axis.axhline(result.target, color=colour)
        axis.set_title(result.name, fontsize=7, wrap=True)
        axis.set_ylabel(result.unit, fontsize=8)
        axis.set_xticks([])
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)

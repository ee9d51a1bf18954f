"""PNG plots of an evaluation: score vs KV budget per policy, and needle heat maps per policy."""

from __future__ import annotations

from pathlib import Path

from .budgets import budget_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _row(record: dict) -> str:
    """The line or plot a record belongs to: its variant (results before variants: its policy)."""
    return record.get("variant", record["policy"])


def score_vs_budget(summary: list[dict], path: Path, task: str = "all") -> Path:
    """A panel per budget kind present (ratios, token counts); one line per variant (policy), full KV dashed.

    The x axis is logarithmic with ticks at the budgets evaluated, labelled as the CLI writes them.
    """
    plt = _pyplot()
    rows = [r for r in summary if r["task"] == task]
    full = next((r["score"] for r in rows if r["policy"] == "full"), None)
    policies = list(dict.fromkeys(_row(r) for r in rows if r["policy"] != "full"))
    colours = {p: f"C{i}" for i, p in enumerate(policies)}  # one colour per policy in every panel
    kinds = [(kind, xlabel) for kind, xlabel in ((float, "KV budget (share of the prompt)"), (int, "KV budget (tokens)"))
             if any(type(r["budget"]) is kind for r in rows)] or [(float, "KV budget (share of the prompt)")]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.2), sharey=True, squeeze=False)
    for ax, (kind, xlabel) in zip(axes[0], kinds):
        for policy in policies:
            points = sorted((r["budget"], r["score"]) for r in rows
                            if _row(r) == policy and type(r["budget"]) is kind)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=policy, color=colours[policy])
        if full is not None:
            ax.axhline(full, color="black", linestyle="--", linewidth=1, label="full KV")
        ax.set_xscale("log")
        budgets = sorted({r["budget"] for r in rows if type(r["budget"]) is kind})
        if budgets:
            ax.set_xticks(budgets, [budget_label(b).removesuffix("tok") for b in budgets])
            ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(f"score ({task})")
    axes[0][0].set_ylim(-0.02, 1.02)
    merged = {}
    for ax in axes[0]:
        handles, labels = ax.get_legend_handles_labels()
        merged.update(zip(labels, handles))
    ncol = min(len(merged), 3 * len(kinds))  # entries per legend row that fit the figure's width
    legend_rows = -(-len(merged) // ncol) if merged else 0
    fig.legend(merged.values(), merged.keys(), loc="upper center", ncol=max(ncol, 1), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.07 * legend_rows))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def needle_heatmaps(rows: list[dict], out: Path) -> list[Path]:
    """One PNG per variant (policy): a panel per budget, context length (rows) x needle depth (columns), mean score."""
    plt = _pyplot()
    import numpy as np

    needle = [r for r in rows if r["task"] == "needle"]
    lengths = sorted({r["length"] for r in needle})
    depths = sorted({r["depth"] for r in needle})
    paths = []
    for policy in dict.fromkeys(_row(r) for r in needle):
        budgets = sorted({r["budget"] for r in needle if _row(r) == policy},
                         key=lambda b: (b is not None and isinstance(b, int), b or 0))
        fig, axes = plt.subplots(1, len(budgets), figsize=(2.2 + 2.4 * len(budgets), 0.9 + 0.45 * len(lengths)),
                                 squeeze=False)
        for ax, budget in zip(axes[0], budgets):
            grid = np.full((len(lengths), len(depths)), np.nan)
            for i, length in enumerate(lengths):
                for j, depth in enumerate(depths):
                    hits = [r["correct"] for r in needle if _row(r) == policy and r["budget"] == budget
                            and r["length"] == length and r["depth"] == depth]
                    if hits:
                        grid[i, j] = sum(hits) / len(hits)
            ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
            ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
            ax.set_yticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
            ax.set_title("full KV" if budget is None else budget_label(budget), fontsize=9)
            ax.set_xlabel("needle depth", fontsize=8)
        axes[0][0].set_ylabel("context length (tokens)", fontsize=8)
        fig.suptitle(f"needle retrieval: {policy}", fontsize=10)
        fig.tight_layout()
        path = out / f"needle_{policy}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths

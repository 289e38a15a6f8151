"""tasks.reporting.plots.save_figure: the one way plots reach the disk."""

from __future__ import annotations

from pathlib import Path

from tasks.reporting.plots import pyplot, save_figure


def test_save_figure_writes_png_closes_and_leaves_no_temporary(tmp_path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.0, 1.0), dpi=50)
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "new" / "p.png", suptitle="t", dpi=100)
    assert out == tmp_path / "new" / "p.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["p.png"]
    assert fig.number not in plt.get_fignums()
    # dpi=100 on a 2 x 1 inch figure: 200 x 100 pixels (width, height in the IHDR chunk)
    head = out.read_bytes()[16:24]
    assert (int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")) == (200, 100)

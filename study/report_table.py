"""The report page's per-trial table: one row per trial, sorted by a click on a column's header.

The sort is a few lines of script in the page itself (no library, works from a file:// URL):
a click sorts by that column, a second click reverses it, and the order is kept in the page's
address (``report.html#sort=lr``, ``#sort=-value``) so a sorted view can be linked and reopened.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from study.names import BEST_VAL_LOSS, DIVERGED, EPOCHS_RUN, LR, WIDTH, is_verification

__all__ = ["COLUMNS", "trials_table_html"]

# (key in the address, header, what the column holds)
COLUMNS = (
    ("study", "study", "the study the trial belongs to"),
    ("number", "trial", "the trial's number in its study"),
    ("width", "width", "hidden width"),
    ("lr", "lr", "learning rate"),
    ("state", "state", "complete, pruned, diverged, verification, failed or running"),
    ("value", "best loss", "lowest validation loss over its epochs (empty: none finite)"),
    ("epochs", "epochs", "epochs trained"),
    ("seconds", "seconds", "wall time of the trial"),
)

_SCRIPT = """<script>(function(){
var t=document.getElementById('trials');if(!t)return;var b=t.tBodies[0];
function key(r,i){var c=r.cells[i],v=c.getAttribute('data-v');
 return v===null?c.textContent:(v===''?null:parseFloat(v));}
function sort(col){var d=col.charAt(0)==='-'?-1:1,n=col.replace(/^-/,''),
 i=Array.prototype.findIndex.call(t.tHead.rows[0].cells,function(h){return h.dataset.col===n;});
 if(i<0)return;var rows=Array.prototype.slice.call(b.rows);
 rows.sort(function(x,y){var a=key(x,i),c=key(y,i);
 if(a===null||c===null)return (a===null)-(c===null);return (a<c?-1:a>c?1:0)*d;});
 rows.forEach(function(r){b.appendChild(r);});t.dataset.sorted=col;}
Array.prototype.forEach.call(t.tHead.rows[0].cells,function(h){h.style.cursor='pointer';
 h.onclick=function(){var c=h.dataset.col;c=t.dataset.sorted===c?'-'+c:c;
 history.replaceState(null,'','#sort='+c);sort(c);};});
var m=/sort=(-?\\w+)/.exec(location.hash);if(m)sort(m[1]);})();</script>"""


def _state(t: FrozenTrial) -> str:
    if is_verification(t):
        return "verification"
    if t.state == TrialState.PRUNED:
        return "diverged" if t.user_attrs.get(DIVERGED) else "pruned"
    return {"FAIL": "failed"}.get(t.state.name, t.state.name.lower())


def _cell(x: float | None, shown: str | None = None) -> str:
    """A numeric cell: sorted by its exact value, shown with 3 significant figures."""
    if x is None or not math.isfinite(x):
        return "<td data-v=''></td>"
    return (
        f"<td data-v='{float(x)!r}'>{html.escape(shown if shown is not None else f'{x:.3g}')}</td>"
    )


def _best(t: FrozenTrial) -> float | None:
    if t.state == TrialState.COMPLETE and t.value is not None:
        return float(t.value)
    v = t.user_attrs.get(BEST_VAL_LOSS)
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def trials_table_html(studies: Sequence[tuple[str, Sequence[FrozenTrial]]]) -> str:
    """The sortable table of every trial of ``studies`` ((name, trials) pairs), with its
    heading, legend and script."""
    head = "".join(
        f"<th data-col='{k}' title='{html.escape(tip)}'>{html.escape(h)}</th>"
        for k, h, tip in COLUMNS
    )
    rows = []
    for name, trials in studies:
        for t in trials:
            width, lr = t.params.get(WIDTH), t.params.get(LR)
            seconds = t.duration.total_seconds() if t.duration else None
            epochs = t.user_attrs.get(EPOCHS_RUN)
            rows.append(
                f"<tr><td>{html.escape(name)}</td>{_cell(t.number, str(t.number))}"
                f"{_cell(width, str(width)) if width is not None else _cell(None)}"
                f"{_cell(lr)}<td>{_state(t)}</td>{_cell(_best(t))}"
                f"{_cell(epochs, str(epochs)) if isinstance(epochs, int) else _cell(None)}"
                f"{_cell(seconds)}</tr>"
            )
    return (
        "<h2 id='all-trials'>Every trial</h2>"
        "<p>Click a column's header to sort by it, again to reverse; the address keeps the "
        "order (<code>report.html#sort=lr</code>). Pruned trials' best loss is an upper bound "
        "(stopped early); diverged trials' is their best finite epoch; verification trials "
        "(<code>study.predict --verify</code>) are never fitted.</p>"
        f"<table id='trials'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        f"</table>{_SCRIPT}"
    )

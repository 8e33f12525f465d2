"""``report.html``: one self-contained, offline page for 10,000+ scans.

Everything is in the file (no network assets): the summary (counts by grade in
clinical order and by status), the "needs review" list (errors, flagged and
indeterminate scans first), a ratio histogram with the grade thresholds (inline
SVG), the flag glossary, and a sortable, filterable, paginated table drawn by a
small inline script from the rows embedded as JSON. Only the current page is in
the DOM and its QC thumbnails load lazily, so a 10,000-row report opens fast
(``benchmarks/bench_report.py``).

Columns come from the rows themselves, ordered by ``client.core.contract``'s schema
when it knows them; a column it does not know is shown too, never dropped.

The table state lives in the URL fragment, so a link opens a filtered view:
``report.html#grade=severe``, ``#review=1``, ``#status=error``, ``#q=text``,
``#sort=ratio&desc=1``, ``#page=3``, ``#size=500`` (``all`` for every row),
``#cols=all`` (every column).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from client.core import contract
from client.core.atomic import atomic_path
from client.outputs.results import QC_DIR, case_files

GRADE_ORDER = ("normal", "mild", "moderate", "severe", "indeterminate")
STATUS_ORDER = ("ok", "flagged", "error")
GRADE_CSS = {g: "#{:02x}{:02x}{:02x}".format(*rgb) for g, rgb in contract.GRADE_RGB.items()}
# Shown by default; every other column is one click (or ``#cols=all``) away.
DEFAULT_VISIBLE = (
    "case_id",
    "status",
    "grade",
    "ratio",
    "ratio_ci_low",
    "ratio_ci_high",
    "liver_hu",
    "spleen_hu",
    "liver_minus_spleen_hu",
    "liver_volume_ml",
    "spleen_volume_ml",
    "phase",
    "criterion",
    "pv_assessment",
    "flags",
    "notes",
    "error",
)
# Used when postprocess.flags (the one home of flag meanings) cannot be imported.
FALLBACK_FLAGS = {
    "liver_missing": "no liver (or under the minimum volume) in the segmentation; not graded",
    "spleen_missing": "no spleen (or under the minimum volume) in the segmentation; not graded",
    "liver_cut_by_edge": "the liver touches the border of the scan; its volume is a lower bound",
    "spleen_cut_by_edge": "the spleen touches the border of the scan; its volume is a lower bound",
    "liver_too_small": "no measuring cube fits inside the liver; not graded",
    "spleen_too_small": "no measuring cube fits inside the spleen; not graded",
    "liver_cube_size_reduced": "the liver was measured with cubes smaller than configured",
    "spleen_cube_size_reduced": "the spleen was measured with cubes smaller than configured",
    "contrast_enhanced": "the scan is or looks contrast-enhanced; not graded unless allowed",
}

__all__ = ["flag_glossary", "thresholds_text", "write_report", "column_order"]


def flag_glossary() -> tuple[dict[str, str], str]:
    """Flag meanings and where they came from (``postprocess.flags`` or the local fallback)."""
    try:
        from postprocess.flags import FLAGS

        return dict(FLAGS), "postprocess.flags"
    except ImportError:
        return dict(FALLBACK_FLAGS), "client.outputs.report_html fallback"


def thresholds_text(t: contract.GradeThresholds = contract.GRADE_THRESHOLDS) -> str:
    """The grading rule as the code applies it (a ratio on a threshold is the worse grade)."""
    return (
        f"normal > {t.normal_above:.1f}; mild {t.mild_above:.1f} < r <= {t.normal_above:.1f}; "
        f"moderate {t.moderate_above:.1f} < r <= {t.mild_above:.1f}; "
        f"severe <= {t.moderate_above:.1f}"
    )


def _schema_units() -> dict[str, tuple[str, str]]:
    schema = getattr(contract, "RESULT_SCHEMA", None)
    if schema:
        return {c.name: (c.unit, c.meaning) for c in schema}
    return {c: ("", "") for c in contract.RESULT_COLUMNS}


def column_order(rows: list[dict]) -> list[str]:
    """Known columns in schema order, then every other key in first-seen order."""
    known = list(_schema_units())
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            seen.setdefault(k, None)
    return [c for c in known if c in seen] + [k for k in seen if k not in known]


def _decimals(name: str, unit: str) -> int | None:
    """Digits that carry meaning: ratios 0.01, HU and mL whole, seconds 0.1."""
    u = unit.lower()
    if name.startswith("ratio") or u == "1":
        return 2
    if u in ("hu", "ml", "kv") or name.endswith(("_hu", "_ml")):
        return 0
    if u in ("s", "mm"):
        return 1
    return None


def _cell(v):
    """JSON-safe cell: numbers stay numbers, lists/dicts become compact text."""
    if v is None:
        return None
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:
        v = v.item()  # NumPy scalar
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (int, str, bool)):
        return v
    if isinstance(v, (list, tuple)):
        return ";".join(str(x) for x in v)
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def _flags_of(r: dict) -> list[str]:
    f = r.get("flags") or ""
    return list(f) if isinstance(f, (list, tuple)) else [x for x in str(f).split(";") if x]


def _needs_review(r: dict) -> bool:
    return (
        r.get("status") in ("error", "flagged")
        or (r.get("grade") or "indeterminate") == "indeterminate"
        or bool(_flags_of(r))
    )


def _problem_rank(r: dict) -> int:
    if r.get("status") == "error":
        return 0
    if (r.get("grade") or "indeterminate") == "indeterminate":
        return 1
    if r.get("status") == "flagged" or _flags_of(r):
        return 2
    return 3


def _histogram_svg(ratios: list[float], t=contract.GRADE_THRESHOLDS) -> str:
    """Inline SVG histogram of ratios (0.05 bins over 0-2, outside values in the end bins)."""
    lo, hi, step = 0.0, 2.0, 0.05
    nb = int(round((hi - lo) / step))
    counts = [0] * nb
    for r in ratios:
        # Right-closed bins (a, b]: a ratio on a threshold lands in the worse grade's bin.
        counts[min(nb - 1, max(0, int(math.ceil((r - lo) / step - 1e-9)) - 1))] += 1
    w, h, left, bottom, top = 660, 210, 46, 34, 18
    pw, ph = w - left - 12, h - bottom - top
    cmax = max(counts) or 1
    bw = pw / nb

    def x(v):
        return left + (v - lo) / (hi - lo) * pw

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="Histogram of liver/spleen ratios" '
        'font-family="sans-serif" font-size="11">'
    ]
    for k, c in enumerate(counts):
        if not c:
            continue
        # Bins never straddle a threshold (thresholds are multiples of the bin width):
        # the bin's upper edge, which it includes, decides its grade.
        g = _grade(round(lo + (k + 1) * step, 9), t)  # 14 * 0.05 is 0.7000000000000001
        bh = c / cmax * ph
        out.append(
            f'<rect x="{x(lo + k * step) + 0.5:.1f}" y="{top + ph - bh:.1f}" width="{bw - 1:.1f}" '
            f'height="{bh:.1f}" fill="{GRADE_CSS[g]}"><title>{lo + k * step:.2f}-'
            f"{lo + (k + 1) * step:.2f}: {c}</title></rect>"
        )
    out.append(
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>'
    )
    for v in (0.0, 0.5, 1.0, 1.5, 2.0):
        out.append(f'<text x="{x(v):.1f}" y="{top + ph + 14}" text-anchor="middle">{v:g}</text>')
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{h - 3}" text-anchor="middle">liver/spleen ratio '
        f"(scans with a ratio: {len(ratios)}; values beyond 0-2 in the end bins)</text>"
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{cmax}</text>'
        f'<text x="{left - 6}" y="{top + ph}" text-anchor="end">0</text>'
    )
    for v, name in (
        (t.moderate_above, "severe | moderate"),
        (t.mild_above, "moderate | mild"),
        (t.normal_above, "mild | normal"),
    ):
        out.append(
            f'<line x1="{x(v):.1f}" y1="{top - 4}" x2="{x(v):.1f}" y2="{top + ph}" '
            f'stroke="#222" stroke-dasharray="4 3"/>'
            f'<text x="{x(v) + 3:.1f}" y="{top + 6}">{v:.1f}</text>'
            f"<title>{name}</title>"
        )
    out.append("</svg>")
    return "".join(out)


def _grade(r: float, t=contract.GRADE_THRESHOLDS) -> str:
    return contract.grade_of_ratio(r, t)


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:1em 1.5em;color:#222}
h1{font-size:1.4em;margin:.2em 0} h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}
th{background:#f2f2f2;position:sticky;top:0;cursor:pointer;vertical-align:bottom}
td.txt{max-width:26em;overflow-wrap:break-word}
th.sorted{background:#dde8f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.st-error{background:#fde2e2} tr.st-flagged{background:#fff6d6}
.g{display:inline-block;padding:0 6px;border-radius:3px;color:#fff;font-weight:600}
.summary{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
.summary table td{font-size:14px} .sw{display:inline-block;width:10px;height:10px;margin-right:4px}
.controls{margin:.6em 0;display:flex;gap:.8em;flex-wrap:wrap;align-items:center}
.controls input[type=search]{width:18em} .muted{color:#666;font-size:13px}
#cols label{margin-right:.8em;font-size:12px;white-space:nowrap}
img.qc{height:72px;display:block} .review li{font-size:13px;margin:1px 0}
dl.glossary dt{font-family:monospace;font-weight:600} dl.glossary dd{margin:0 0 .4em 1.5em;font-size:13px}
"""

_JS = r"""
(function(){
'use strict';
var D=JSON.parse(document.getElementById('hs-data').textContent);
var C=D.columns,N=D.rows.length,I={};C.forEach(function(c,i){I[c]=i;});
var st={};
function esc(s){return String(s).replace(/[&<>"']/g,function(c){return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c];});}
function parse(){var p=new URLSearchParams(location.hash.replace(/^#/,''));
 st={q:p.get('q')||'',grade:p.get('grade')||'',status:p.get('status')||'',review:p.get('review')==='1',
  sort:p.get('sort')||'',desc:p.get('desc')==='1',page:Math.max(1,parseInt(p.get('page')||'1',10)||1),
  size:p.get('size')==='all'?1e9:Math.max(1,parseInt(p.get('size')||'100',10)||100),cols:p.get('cols')||''};}
function hash(ch){for(var k in ch)st[k]=ch[k];var p=new URLSearchParams();
 if(st.q)p.set('q',st.q);if(st.grade)p.set('grade',st.grade);if(st.status)p.set('status',st.status);
 if(st.review)p.set('review','1');if(st.sort)p.set('sort',st.sort);if(st.desc)p.set('desc','1');
 if(st.page>1)p.set('page',st.page);if(st.size!==100)p.set('size',st.size>=1e9?'all':st.size);
 if(st.cols)p.set('cols',st.cols);location.hash=p.toString();}
function fmt(v,c){if(v===null||v===undefined)return '';var d=D.decimals[c];
 if(typeof v==='number'){if(d!==undefined&&d!==null){var s=v.toFixed(d);return /^-0(\.0+)?$/.test(s)?s.slice(1):s;}
  return Number.isInteger(v)?String(v):String(+v.toPrecision(4));}
 return String(v);}
function visible(){var v=st.cols==='all'?C.slice():st.cols?st.cols.split(',').filter(function(c){return c in I;}):C.filter(function(c){return D.visible.indexOf(c)>=0;});
 return ['case_id'].concat(v.filter(function(c){return c!=='case_id';}));}
function rowsNow(){var q=st.q.toLowerCase(),out=[];
 var gi=I.grade,si=I.status,txt=['case_id','flags','notes','error','source'].filter(function(c){return c in I;}).map(function(c){return I[c];});
 for(var i=0;i<N;i++){var r=D.rows[i];
  if(st.grade&&(r[gi]||'indeterminate')!==st.grade)continue;
  if(st.status&&r[si]!==st.status)continue;
  if(st.review&&!D.review[i])continue;
  if(q){var hit=false;for(var k=0;k<txt.length&&!hit;k++){var t=r[txt[k]];if(t!==null&&String(t).toLowerCase().indexOf(q)>=0)hit=true;}if(!hit)continue;}
  out.push(i);}
 if(st.sort&&st.sort in I){var j=I[st.sort],dir=st.desc?-1:1;
  out.sort(function(a,b){var x=D.rows[a][j],y=D.rows[b][j];
   if(x===null||x==='')return (y===null||y==='')?a-b:1;if(y===null||y==='')return -1;
   var c=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));
   return c?dir*c:a-b;});}
 else out.sort(function(a,b){return (D.rank[a]-D.rank[b])||(a-b);});
 return out;}
function render(){parse();var vis=visible(),sel=rowsNow(),pages=Math.max(1,Math.ceil(sel.length/st.size));
 if(st.page>pages)st.page=pages;var a=(st.page-1)*st.size,b=Math.min(sel.length,a+st.size);
 var h='<tr>'+vis.map(function(c){var cls=c===st.sort?' class="sorted"':'';var m=D.meaning[c]||'';var u=D.units[c]?' ['+D.units[c]+']':'';
   var th='<th data-col="'+esc(c)+'"'+cls+' title="'+esc(m+u)+'">'+esc(c).replace(/_/g,'_<wbr>')+(c===st.sort?(st.desc?' \u25BC':' \u25B2'):'')+'</th>';
   return c==='case_id'?th+'<th>qc</th>':th;}).join('')+'</tr>';
 var body=[];for(var k=a;k<b;k++){var i=sel[k],r=D.rows[i],cid=String(r[I.case_id]);
  var img='';if(D.qc[i]){var u='qc/'+encodeURIComponent(cid)+'.png';
   img='<a href="'+esc(u)+'"><img class="qc" loading="lazy" src="'+esc(u)+'" alt="QC picture of '+esc(cid)+'"></a>';}
  var cells=vis.map(function(c){var v=r[I[c]];var t=fmt(v,c);var td;
   if(c==='grade'&&v)td='<td><span class="g" style="background:'+(D.gradeCss[v]||'#888')+'">'+esc(t)+'</span></td>';
   else if(typeof v==='number')td='<td class="num" title="'+esc(v)+'">'+esc(t)+'</td>';
   else td='<td class="txt">'+esc(t).replace(/(;|__|\/)/g,'$1<wbr>')+'</td>';
   return c==='case_id'?td+'<td class="qc">'+img+'</td>':td;}).join('');
  body.push('<tr class="st-'+esc(r[I.status]||'')+'" data-case="'+esc(cid)+'">'+cells+'</tr>');}
 document.getElementById('hs-head').innerHTML=h;document.getElementById('hs-body').innerHTML=body.join('');
 document.getElementById('hs-count').textContent=(sel.length?('rows '+(a+1)+'-'+b+' of '+sel.length):'no rows')+
  (sel.length!==N?' (filtered from '+N+')':'')+'; page '+st.page+' of '+pages;
 document.getElementById('hs-q').value=st.q;document.getElementById('hs-grade').value=st.grade;
 document.getElementById('hs-status').value=st.status;document.getElementById('hs-review').checked=st.review;
 document.getElementById('hs-size').value=st.size>=1e9?'all':String(st.size);
 document.getElementById('hs-prev').disabled=st.page<=1;document.getElementById('hs-next').disabled=st.page>=pages;
 document.body.setAttribute('data-rendered',String(b-a));}
function init(){var cols=document.getElementById('cols');
 cols.innerHTML=C.map(function(c){return '<label><input type="checkbox" value="'+esc(c)+'"> '+esc(c)+'</label>';}).join('');
 cols.addEventListener('change',function(){var v=[].slice.call(cols.querySelectorAll('input:checked')).map(function(x){return x.value;});
  hash({cols:v.length===C.length?'all':v.join(','),page:1});});
 document.getElementById('hs-head').addEventListener('click',function(e){var th=e.target.closest('th[data-col]');if(!th)return;
  var c=th.getAttribute('data-col');hash(st.sort===c?{desc:!st.desc}:{sort:c,desc:false});});
 var t;document.getElementById('hs-q').addEventListener('input',function(e){clearTimeout(t);var v=e.target.value;t=setTimeout(function(){hash({q:v,page:1});},250);});
 document.getElementById('hs-grade').addEventListener('change',function(e){hash({grade:e.target.value,page:1});});
 document.getElementById('hs-status').addEventListener('change',function(e){hash({status:e.target.value,page:1});});
 document.getElementById('hs-review').addEventListener('change',function(e){hash({review:e.target.checked,page:1});});
 document.getElementById('hs-size').addEventListener('change',function(e){hash({size:e.target.value==='all'?1e9:parseInt(e.target.value,10),page:1});});
 document.getElementById('hs-prev').addEventListener('click',function(){hash({page:st.page-1});});
 document.getElementById('hs-next').addEventListener('click',function(){hash({page:st.page+1});});
 window.addEventListener('hashchange',function(){render();syncCols();});render();syncCols();}
function syncCols(){var vis=visible();[].forEach.call(document.querySelectorAll('#cols input'),function(x){x.checked=vis.indexOf(x.value)>=0;});}
init();
})();
"""


def _model_words(model, mode=None) -> str:
    """The model as the report header names it (run.json's ``model``)."""
    if not isinstance(model, dict):
        return str(model) if model else ("none: --masks label maps" if mode == "masks" else "")
    name = model.get("model_name") or model.get("name")
    if not name:
        return "none: --masks label maps" if mode == "masks" else "unknown"
    words = str(name)
    if model.get("model_version"):
        words += f" v{model['model_version']}"
    if model.get("model_sha256"):
        words += f" (sha256 {str(model['model_sha256'])[:12]})"
    return words


def _json_script(obj) -> str:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # Inside <script>: "</" must not appear, and U+2028/9 are fine in JSON but not in old JS.
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _count_table(title: str, counts: dict, order, colours=None, key: str = "") -> str:
    total = sum(counts.values()) or 1
    rows = []
    for name in list(order) + sorted(k for k in counts if k not in order):
        n = counts.get(name, 0)
        sw = (
            f'<span class="sw" style="background:{colours[name]}"></span>'
            if colours and name in colours
            else ""
        )
        link = (
            f'<a href="#{key}={quote(name)}">{html.escape(name)}</a>'
            if n and key
            else html.escape(name)
        )
        rows.append(
            f'<tr><td>{sw}{link}</td><td class="num">{n}</td>'
            f'<td class="num">{100.0 * n / total:.1f} %</td></tr>'
        )
    return f"<table><tr><th>{html.escape(title)}</th><th>scans</th><th>share</th></tr>{''.join(rows)}</table>"


def write_report(rows: list[dict], out_dir: Path, run_info: dict | None = None) -> Path:
    """Render ``report.html`` in ``out_dir`` from result rows (atomically).

    Parameters
    ----------
    rows : list of dict
        Result rows (``results.jsonl``); for a repeated case_id the last row wins.
    out_dir : Path
        The batch output folder; QC pictures are looked up in ``out_dir/qc``.
    run_info : dict, optional
        The run manifest (``run.json``): model, timings.

    Returns
    -------
    Path
        ``out_dir / "report.html"``.
    """
    out_dir = Path(out_dir)
    last: dict[str, dict] = {}
    for r in rows:
        last[str(r.get("case_id", ""))] = r
    rows = list(last.values())
    columns = column_order(rows) or ["case_id", "status", "grade"]
    for must in ("case_id", "status", "grade"):
        if must not in columns:
            columns.append(must)
    qc_dir = out_dir / QC_DIR
    qc_names = {p.name for p in qc_dir.iterdir()} if qc_dir.is_dir() else set()
    has_qc = [case_files(out_dir, str(r.get("case_id"))).qc.name in qc_names for r in rows]
    glossary, glossary_source = flag_glossary()
    t = _tally(rows)
    review = [_needs_review(r) for r in rows]
    data = _table_data(rows, columns, has_qc, review)
    problems = sorted(
        (i for i, x in enumerate(review) if x), key=lambda i: (_problem_rank(rows[i]), i)
    )
    doc = _document(
        len(rows), len(problems), t, _run_info_html(run_info), _review_html(rows, problems),
        _glossary_html(glossary, t.flags), glossary_source, data,
    )  # fmt: skip
    path = out_dir / "report.html"
    with atomic_path(path, ".html") as tmp:
        Path(tmp).write_text(doc, encoding="utf-8")
    return path


@dataclass
class _Tally:
    """What the summary counts: scans by grade, status, phase (errors aside) and
    portal-venous assessment, the graded ratios, scans per flag."""

    grades: dict = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)
    pv: dict = field(default_factory=dict)
    ratios: list = field(default_factory=list)
    flags: dict = field(default_factory=dict)


def _tally(rows: list[dict]) -> _Tally:
    t = _Tally()
    for r in rows:
        g = r.get("grade") or "indeterminate"
        t.grades[g] = t.grades.get(g, 0) + 1
        s = r.get("status") or "error"
        t.statuses[s] = t.statuses.get(s, 0) + 1
        if s != "error":
            ph = r.get("phase") or "unknown"
            t.phases[ph] = t.phases.get(ph, 0) + 1
        if r.get("pv_assessment"):
            t.pv[r["pv_assessment"]] = t.pv.get(r["pv_assessment"], 0) + 1
        v = r.get("ratio")
        # The histogram keeps the criteria apart: only ratios that graded a scan (an
        # indeterminate or enhanced scan's ratio is no grade and is not drawn as one).
        graded = g in GRADE_CSS and g != "indeterminate"
        if isinstance(v, (int, float)) and math.isfinite(v) and s != "error" and graded:
            t.ratios.append(float(v))
        for f in _flags_of(r):
            t.flags[f] = t.flags.get(f, 0) + 1
    return t


def _table_data(rows: list[dict], columns: list, has_qc: list, review: list) -> dict:
    """The table's JSON: columns with units, meanings and decimals, cells, QC, review, rank."""
    schema = _schema_units()
    return {
        "columns": columns,
        "units": {c: schema.get(c, ("", ""))[0] for c in columns},
        "meaning": {c: schema.get(c, ("", ""))[1] for c in columns},
        "decimals": {
            c: d for c in columns if (d := _decimals(c, schema.get(c, ("", ""))[0])) is not None
        },
        "visible": [c for c in DEFAULT_VISIBLE if c in columns],
        "gradeCss": GRADE_CSS,
        "rows": [[_cell(r.get(c)) for c in columns] for r in rows],
        "qc": [1 if x else 0 for x in has_qc],
        "review": [1 if x else 0 for x in review],
        "rank": [_problem_rank(r) for r in rows],
    }


def _review_html(rows: list[dict], problems: list[int]) -> str:
    """The "needs review" list: the first 100 problems, worst first, and a link to the rest."""
    shown = problems[:100]
    items = []
    for i in shown:
        r = rows[i]
        why = r.get("error") or ", ".join(_flags_of(r)) or "indeterminate grade"
        cid = str(r.get("case_id", ""))
        items.append(
            f'<li><a href="#q={html.escape(quote(cid))}">{html.escape(cid)}</a> '
            f"({html.escape(str(r.get('status', '')))}, {html.escape(str(r.get('grade') or ''))}): "
            f"{html.escape(str(why))[:300]}</li>"
        )
    more = (
        f'<p class="muted">... and {len(problems) - len(shown)} more: '
        '<a href="#review=1">show all in the table</a>.</p>'
        if len(problems) > len(shown)
        else ""
    )
    return (
        f'<ul class="review">{"".join(items)}</ul>{more}'
        if problems
        else "<p>None: every scan was graded without a flag.</p>"
    )


def _glossary_html(glossary: dict, flag_counts: dict) -> str:
    """Every known or seen flag with its meaning and how many scans carry it."""
    used = sorted(set(flag_counts) | set(glossary))
    return "".join(
        f"<dt>{html.escape(f)}</dt><dd>{html.escape(glossary.get(f, 'no description (unknown flag)'))}"
        f"{f' <span class=muted>({flag_counts[f]} scans)</span>' if f in flag_counts else ''}</dd>"
        for f in used
    )


def _run_info_html(run_info: dict | None) -> str:
    """The header line on the model, the mode and the speed (from run.json)."""
    if not run_info:
        return ""
    model = run_info.get("model") or {}
    model_name = _model_words(model, run_info.get("mode"))
    t = run_info.get("timings") or {}
    return (
        f"<p class=muted>Model: {html.escape(str(model_name))}"
        + (f" ({html.escape(str(run_info['mode']))})" if run_info.get("mode") else "")
        + "; "
        f"{html.escape(str(t.get('scans_per_minute', '')))} scans/min; "
        f"wall {html.escape(str(t.get('wall_s', '')))} s</p>"
    )


def _document(
    n: int, n_review: int, t: _Tally, info: str, review_html: str, gl: str, glossary_source: str,
    data: dict,
) -> str:  # fmt: skip
    """The page."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>HepaScreen report ({n} scans)</title><style>{_CSS}</style></head><body>
<h1>HepaScreen liver/spleen attenuation screening</h1>
<p>{n} scans; {n_review} need review.</p>{info}
<div class="summary">
{_count_table("grade", t.grades, GRADE_ORDER, GRADE_CSS, "grade")}
{_count_table("status", t.statuses, STATUS_ORDER, None, "status")}
{_count_table("contrast phase", t.phases, contract.PHASES)}
{_count_table("portal-venous liver HU", t.pv, contract.PV_ASSESSMENTS) if t.pv else ""}
<div>{_histogram_svg(t.ratios)}</div>
</div>
<p>Each phase is judged by the criterion that holds for it, never mixed (column
<code>criterion</code>). Unenhanced CT: grades from the liver/spleen CT ratio of cube means:
{html.escape(thresholds_text())} (a ratio on a threshold takes the worse grade); the
histogram shows these graded ratios only. Portal-venous CT: grade indeterminate, and
<code>pv_assessment</code> from liver attenuation alone (&lt; 80 HU moderate steatosis likely,
80-90 HU possible; Pickhardt et al. 2024). Arterial, delayed and unknown phases: no
criterion. Research use only: not a diagnosis; check every flagged scan and the QC
pictures.</p>
<h2 id="review">Needs review ({n_review}): errors, indeterminate grades, flags</h2>
{review_html}
<h2 id="table">All scans</h2>
<div class="controls">
<input id="hs-q" type="search" placeholder="filter: case_id, flag, note, error">
<select id="hs-grade"><option value="">any grade</option>{"".join(f'<option value="{g}">{g}</option>' for g in GRADE_ORDER)}</select>
<select id="hs-status"><option value="">any status</option>{"".join(f'<option value="{s}">{s}</option>' for s in STATUS_ORDER)}</select>
<label><input id="hs-review" type="checkbox"> needs review only</label>
<select id="hs-size"><option value="50">50</option><option value="100">100</option><option value="500">500</option><option value="all">all</option></select>
<button id="hs-prev" type="button">&larr; prev</button><button id="hs-next" type="button">next &rarr;</button>
<span id="hs-count" class="muted"></span></div>
<details><summary class="muted">columns</summary><div id="cols"></div></details>
<noscript><p>The table needs JavaScript; results.csv holds the same rows.</p></noscript>
<table id="hs-table"><thead id="hs-head"></thead><tbody id="hs-body"></tbody></table>
<h2 id="flags">Flags</h2>
<dl class="glossary">{gl}</dl>
<p class="muted">Flag meanings from {html.escape(glossary_source)}.</p>
<script type="application/json" id="hs-data">{_json_script(data)}</script>
<script>{_JS}</script>
</body></html>
"""

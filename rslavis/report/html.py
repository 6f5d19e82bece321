"""HTML building blocks of the report pages: one self-contained file, no external requests.

Images are ``data:`` URIs (PNG curves, JPEG thumbnails), the style sheet and the small
gallery script are inline, fonts are the system's.
"""

import base64
import html
import io
import math

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;padding:0 18px 40px;color:#1d232b;background:#fbfbfc}
h1{font-size:1.5em;margin:18px 0 4px}h2{font-size:1.2em;margin:26px 0 8px;border-bottom:1px solid #d5d9de;padding-bottom:3px}
h3{font-size:1em;margin:14px 0 6px}
nav a{margin-right:12px;color:#2457a6;text-decoration:none}
.sub{color:#5b6470;font-size:.9em}
.warn{background:#fff4d6;border:1px solid #e8c66a;padding:6px 10px;margin:8px 0;font-size:.9em}
table{border-collapse:collapse;font-size:.88em;margin:4px 0 10px}
th,td{border:1px solid #d5d9de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.better{color:#17753a}.worse{color:#b3261e}
.kv td:first-child{color:#5b6470;white-space:nowrap}
pre{background:#f1f3f5;padding:8px;overflow:auto;font-size:.8em;max-height:420px}
img.plot{max-width:100%;border:1px solid #e1e4e8;background:#fff;margin:4px 0}
.controls{margin:8px 0;font-size:.9em}.controls label{margin-right:12px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px}
.card{border:1px solid #d5d9de;background:#fff;padding:8px;display:flex;gap:8px;font-size:.85em}
.card img,.card .noimg{width:128px;height:128px;flex:none;object-fit:contain;image-rendering:pixelated;background:#eee}
.card .noimg{display:flex;align-items:center;justify-content:center;color:#8a929c;font-size:.8em;text-align:center}
.card .meta{color:#5b6470;font-size:.9em;margin-bottom:3px}
.gen{margin:3px 0}.cap2{margin:3px 0;color:#2457a6}
.obj{display:inline-block;border-radius:3px;padding:0 5px;margin:1px 2px 1px 0;font-size:.9em}
.ok{background:#d8f0de;color:#17532b}.miss{background:#fde7c8;color:#7a4a00;text-decoration:line-through}
.hall{background:#f9d3d0;color:#8c1d16}.cnt{color:#8c1d16;font-size:.9em}
.legend .obj{margin-right:8px}
details summary{cursor:pointer;color:#2457a6}
ol.refs{margin:2px 0;padding-left:18px}
"""

GALLERY_JS = """
(function(){
  var g=document.getElementById('gallery'); if(!g) return;
  var cards=Array.prototype.slice.call(g.children);
  function num(c,k,d){var v=c.getAttribute('data-'+k);return v===null||v===''?d:parseFloat(v);}
  function update(){
    var s=document.getElementById('sort').value, sorted=cards.slice();
    var keys={sde:function(c){return num(c,'sde',2);},hall:function(c){return -num(c,'hall',0);},
      miss:function(c){return -num(c,'miss',0);},cnt:function(c){return -num(c,'cnt',0);},
      change:function(c){return -num(c,'change',0);},order:function(c){return num(c,'order',0);}};
    var f=keys[s]||keys.order;
    sorted.sort(function(a,b){return (f(a)-f(b))||(num(a,'order',0)-num(b,'order',0));});
    var need={}; ['hall','miss','cnt','wrong'].forEach(function(k){var e=document.getElementById('only-'+k);need[k]=e&&e.checked;});
    var shown=0;
    sorted.forEach(function(c){
      var ok=true; for(var k in need){ if(need[k]&&!(num(c,k,0)>0)) ok=false; }
      c.style.display=ok?'':'none'; if(ok) shown++; g.appendChild(c);
    });
    document.getElementById('shown').textContent=shown+' of '+cards.length+' shown';
  }
  document.querySelectorAll('.controls select,.controls input').forEach(function(e){e.addEventListener('change',update);});
  update();
})();
"""


def esc(text):
    return html.escape("" if text is None else str(text), quote=True)


def fmt(value, digits=4):
    if value is None:
        return "-"  # a metric with nothing to average (e.g. no count compared)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.{digits}f}"
    return str(value)


def png_uri(data):
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail_uri(path, size=128):
    """A JPEG ``data:`` URI of the image at ``path`` fitted in ``size`` pixels; None when unreadable."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=82)
    except Exception:  # a missing or broken file: the card shows a placeholder, not a broken image
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def table(headers, rows, num_cols=None, cls=""):
    """A table; cells are escaped unless given as ``("html", markup)``."""
    num_cols = set(num_cols or ())

    def cell(j, v, tag="td"):
        c = ' class="num"' if tag == "td" and j in num_cols else ""
        if isinstance(v, tuple) and len(v) == 2 and v[0] == "html":
            return f"<{tag}{c}>{v[1]}</{tag}>"
        return f"<{tag}{c}>{esc(fmt(v) if not isinstance(v, str) else v)}</{tag}>"

    head = "".join(cell(j, h, "th") for j, h in enumerate(headers)) if headers else ""
    body = "".join("<tr>" + "".join(cell(j, v) for j, v in enumerate(r)) + "</tr>" for r in rows)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}>" + (f"<thead><tr>{head}</tr></thead>" if head else "") + f"<tbody>{body}</tbody></table>"


def plots(figures):
    return "".join(f'<h3>{esc(t)}</h3><img class="plot" src="{png_uri(png)}" alt="{esc(t)}">' for t, png in figures)


def objects_html(a):
    """Chips for matched / missed / hallucinated objects and a count-error line."""
    def label(name, n):
        return esc(name) + (f" &times;{n}" if n is not None else "")

    chips = [f'<span class="obj ok" title="matched">{label(h, a["pred"].get(h))}</span>' for g, h in a["matched"]]
    chips += [f'<span class="obj miss" title="missed: in the references only">{label(g, a["gt"].get(g))}</span>' for g in a["missed"]]
    chips += [f'<span class="obj hall" title="hallucinated: in the caption only">{label(h, a["pred"].get(h))}</span>' for h in a["hallucinated"]]
    out = '<div class="objs">' + ("".join(chips) or '<span class="sub">no objects</span>') + "</div>"
    if a["count_errors"]:
        errs = "; ".join(f"{esc(o)}: caption {p}, references {r}" for o, p, r in a["count_errors"])
        out += f'<div class="cnt">count errors: {errs}</div>'
    return out


LEGEND = ('<p class="legend sub"><span class="obj ok">matched</span><span class="obj miss">missed (references only)</span>'
          '<span class="obj hall">hallucinated (caption only)</span>&times;N: the count stated (references: the fused count)</p>')


def controls(options, filters):
    """Sort select and filter checkboxes for the gallery (``GALLERY_JS``)."""
    sel = "".join(f'<option value="{v}">{esc(t)}</option>' for v, t in options)
    boxes = "".join(f'<label><input type="checkbox" id="only-{k}"> {esc(t)}</label>' for k, t in filters)
    return f'<div class="controls"><label>Sort: <select id="sort">{sel}</select></label>{boxes}<span id="shown" class="sub"></span></div>'


def page(title, body, subtitle=""):
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        # the page must never fetch anything: forbid every origin except inline data
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1>" + (f'<div class="sub">{subtitle}</div>' if subtitle else "")
        + body + f"<script>{GALLERY_JS}</script></body></html>\n"
    )

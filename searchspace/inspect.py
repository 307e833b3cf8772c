"""`python -m searchspace.inspect NAME_OR_GENOME_JSON`: the size of a design, beside its published numbers.

python -m searchspace.inspect --list
python -m searchspace.inspect fcanet50
python -m searchspace.inspect my_genome.json --convention full --json
python -m searchspace.inspect --parity          # every catalog design against its sources
"""

from __future__ import annotations

import json
import sys

from . import catalog
from .cli import argument_parser, cli_main
from .cost import CONVENTIONS, cost
from .errors import UserError
from .recipe import Recipe

COUNTS = ("params", "flops", "activations")


def report(arg: str, convention: str | None = None, resolution: int | None = None) -> dict:
    name, genome, design = catalog.resolve(arg)
    target = design.target if design else None
    convention = convention or (target.convention if target else "paper")
    if resolution is None and target is not None:
        resolution = target.resolution
    c = cost(genome, convention, resolution, target.num_classes if target else None)
    out = {
        "name": name,
        "genome_key": genome.key,
        **c.to_dict(),
        "genome": genome.to_dict(),
        "published": None,
    }
    if design is not None:
        comparable = c.convention == design.target.convention and c.resolution == design.target.resolution
        out["published"] = {
            "source": design.source,
            "counts": {
                k: {
                    "value": v.value,
                    "exact": v.exact,
                    "step": v.step,
                    "source": v.source,
                    "diff": (out[k] - v.value) if comparable else None,
                    "match": v.matches(out[k]) if comparable else None,
                }
                for k, v in design.counts.items()
            },
            "results": [r.__dict__ for r in design.results],
            "note": design.note,
            "recipe": design.recipe.to_dict(),
        }
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.4g}"


def print_report(r: dict) -> None:
    print(
        f"{r['name']}  (genome {r['genome_key']}, {r['convention']} convention, "
        f"{r['resolution']}x{r['resolution']}, {r['num_classes']} classes)"
    )
    pub = r["published"] or {"counts": {}}
    print(f"  {'':12}{'ours':>18}{'published':>18}{'diff':>14}  ")
    for k in COUNTS:
        p = pub["counts"].get(k)
        line = f"  {k:12}{r[k]:>18,}"
        if p:
            tag = "exact" if p["exact"] else f"to {p['step']:g}"
            ok = {True: "ok", False: "DIFFERS", None: "other target"}[p["match"]]
            line += f"{_fmt(p['value']):>18}{_fmt(p['diff']):>14}  {ok} ({tag})"
        print(line)
    if r["published"]:
        for res in r["published"]["results"]:
            size = ", ".join(f"{k} {_fmt(res[k])}" for k in ("params", "flops") if res[k] is not None)
            print(
                f"  top-1 {res['top1']}"
                + (f" / top-5 {res['top5']}" if res["top5"] else "")
                + f"  [{res['source']}]"
                + (f"  printed with {size}" if size else "")
                + (f"  ({res['note']})" if res["note"] else "")
            )
        if r["published"]["note"]:
            print(f"  note: {r['published']['note']}")
        changed = {k: v for k, v in r["published"]["recipe"].items() if v != Recipe().to_dict()[k]}
        if changed:  # how the authors start and regularise it (not part of the genome)
            print("  recipe: " + ", ".join(f"{k}={v}" for k, v in changed.items()))


def main(argv=None) -> int:
    ap = argument_parser(prog="python -m searchspace.inspect", description=__doc__.splitlines()[0])
    ap.add_argument("design", nargs="?", help="catalog name, genome JSON file, or inline genome JSON")
    ap.add_argument("--list", action="store_true", help="print the catalog names, one a line")
    ap.add_argument("--parity", action="store_true", help="every catalog design against its published counts")
    ap.add_argument("--convention", choices=CONVENTIONS)
    ap.add_argument("--resolution", type=int)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(catalog.names()))
        return 0
    if args.parity:
        rows = [report(n, args.convention, args.resolution) for n in catalog.names()]
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                print_report(r)
        return 0
    if not args.design:
        raise UserError("give a catalog name or a genome JSON (or --list)")
    r = report(args.design, args.convention, args.resolution)
    if args.json:
        print(json.dumps(r))
    else:
        print_report(r)
    return 0


if __name__ == "__main__":
    cli_main(lambda: main(sys.argv[1:]))
